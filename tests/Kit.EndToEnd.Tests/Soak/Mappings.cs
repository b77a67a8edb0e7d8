using System.Globalization;
using System.Text;

namespace Kit.EndToEnd.Tests.Soak;

/// <summary>
/// A process's memory mappings with their resident size, from /proc/PID/smaps, and which of them grew between two
/// readings: when the soak fails on a slope, this says where the memory went (the GC's reservation, a 64 MiB glibc
/// arena, a thread stack, a file) without a debugger on the CI machine.
/// </summary>
internal sealed class Mappings
{
    private readonly Dictionary<ulong, (string Range, string What, long RssKiB)> _byStart = [];

    public double T { get; private init; }

    public static Mappings? TryRead(int pid, double t)
    {
        var m = new Mappings { T = t };
        try
        {
            ulong start = 0;
            string range = "", what = "";
            foreach (string line in File.ReadLines($"/proc/{pid}/smaps"))
            {
                // A mapping's header, "start-end perms offset dev inode [path]", then its "Key: value" lines.
                int space = line.IndexOf(' ', StringComparison.Ordinal);
                if (space > 0 && line[space - 1] != ':')
                {
                    string[] f = line.Split(' ', 6, StringSplitOptions.RemoveEmptyEntries);
                    string[] ends = f[0].Split('-');
                    start = ulong.Parse(ends[0], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                    ulong size = ulong.Parse(ends[1], NumberStyles.HexNumber, CultureInfo.InvariantCulture) - start;
                    range = f[0];
                    what = $"{f[1]} {size / 1024} KiB {(f.Length > 5 ? f[5].Trim() : "[anon]")}";
                }
                else if (line.StartsWith("Rss:", StringComparison.Ordinal))
                {
                    long rss = long.Parse(line.AsSpan(4).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture);
                    m._byStart[start] = (range, what, rss);
                }
            }
            return m;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }

    /// <summary>The <paramref name="count"/> mappings whose RSS changed most from <paramref name="before"/> to this one, one per line.</summary>
    public string GrowthSince(Mappings before, int count)
    {
        var rows = _byStart.Select(kv => (kv.Value.Range, kv.Value.What, Before: before._byStart.TryGetValue(kv.Key, out var b) ? b.RssKiB : 0, After: kv.Value.RssKiB))
            .Concat(before._byStart.Where(kv => !_byStart.ContainsKey(kv.Key)).Select(kv => (kv.Value.Range, kv.Value.What, Before: kv.Value.RssKiB, After: 0L)))
            .Where(r => r.Before != r.After)
            .OrderByDescending(r => Math.Abs(r.After - r.Before))
            .Take(count);
        var s = new StringBuilder();
        long total = _byStart.Values.Sum(v => v.RssKiB) - before._byStart.Values.Sum(v => v.RssKiB);
        s.AppendLine(CultureInfo.InvariantCulture, $"    mappings whose RSS changed most, {before.T:F0} s -> {T:F0} s (all mappings: {total:+0;-0} KiB; {_byStart.Count} now):");
        foreach (var r in rows)
        {
            s.AppendLine(CultureInfo.InvariantCulture, $"      {r.After - r.Before,+7:+0;-0} KiB ({r.Before} -> {r.After})  {r.Range} {r.What}");
        }
        return s.ToString();
    }
}
