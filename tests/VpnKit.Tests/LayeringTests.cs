namespace Kit.VpnKit.Tests;

/// <summary>
/// design.md: Wire and Stack are pure (no I/O, threads or clock; time is passed in). A source scan keeps it so.
/// </summary>
public sealed class LayeringTests
{
    private static readonly string[] Forbidden =
    [
        "System.Net.Sockets", "System.IO", "System.Threading", "Thread.", "Task.", "async ", "await ",
        "DateTime", "Stopwatch", "Environment.TickCount", "TimeProvider", "File.", "Console.",
    ];

    public static TheoryData<string> Layers => new() { "Wire", "Stack" };

    [Theory]
    [MemberData(nameof(Layers))]
    public void PureLayersDoNoIoThreadsOrClock(string layer)
    {
        string dir = FindRepo();
        string[] files = Directory.GetFiles(Path.Combine(dir, "src", "VpnKit", layer), "*.cs");
        Assert.NotEmpty(files);
        foreach (string f in files)
        {
            foreach (string line in File.ReadLines(f))
            {
                string code = line.TrimStart();
                if (code.StartsWith("//", StringComparison.Ordinal) || code.StartsWith("///", StringComparison.Ordinal))
                {
                    continue;
                }
                foreach (string bad in Forbidden)
                {
                    Assert.False(code.Contains(bad, StringComparison.Ordinal), $"{Path.GetFileName(f)} uses {bad}: {code}");
                }
            }
        }
    }

    private static string FindRepo()
    {
        string? dir = AppContext.BaseDirectory;
        while (dir is not null && !File.Exists(Path.Combine(dir, "Kit.slnx")))
        {
            dir = Path.GetDirectoryName(dir);
        }
        Assert.NotNull(dir);
        return dir!;
    }
}
