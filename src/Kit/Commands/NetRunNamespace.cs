using System.Globalization;
using System.Runtime.InteropServices;
using Kit.Linux;

namespace Kit.Cli.Commands;

/// <summary>
/// The namespace `kit net run` makes, <c>kit-PID</c> (PID: kit's), with <c>/etc/netns/kit-PID</c> beside it: what is
/// left of it when kit is gone, and how it is taken down.
/// </summary>
internal static class NetRunNamespace
{
    private const string Prefix = "kit-";

    // PosixSignal has no SIGKILL member (it cannot be handled); raw signal numbers may be cast to it.
    private const PosixSignal SigKill = (PosixSignal)9;

    public static string Name(int pid) => Prefix + pid.ToString(CultureInfo.InvariantCulture);

    public static string EtcDirectory(string name) => $"/etc/netns/{name}";

    /// <summary>
    /// Takes down namespaces that a kit killed by SIGKILL (or a crash) left: those named after a process that no longer
    /// exists, or after this process (which has not made its own yet, so a previous holder of the PID made it). A
    /// namespace of a live PID is never touched: that kit may still be running. Names of other forms (the tests'
    /// <c>kit-tPID-N</c>) are not ours.
    /// </summary>
    public static void RemoveStale()
    {
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (string dir in (ReadOnlySpan<string>)["/run/netns", "/etc/netns"])
        {
            try
            {
                foreach (string path in Directory.EnumerateFileSystemEntries(dir, Prefix + "*"))
                {
                    names.Add(Path.GetFileName(path));
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        foreach (string name in names)
        {
            if (!int.TryParse(name.AsSpan(Prefix.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int pid) || pid <= 0)
            {
                continue;
            }
            if (pid == Environment.ProcessId || !Directory.Exists($"/proc/{pid}"))
            {
                Remove(name);
            }
        }
    }

    /// <summary>
    /// Kills what still runs inside <paramref name="name"/> (a command's daemons, or everything when kit was killed:
    /// without its gateway they have no network left), then deletes the namespace and its /etc/netns directory.
    /// </summary>
    public static void Remove(string name)
    {
        if (File.Exists($"/run/netns/{name}"))
        {
            KillProcessesIn(name);
            NetCommand.RunIp(["netns", "del", name]);
        }
        try
        {
            string etc = EtcDirectory(name);
            if (Directory.Exists(etc))
            {
                Directory.Delete(etc, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }

    private static void KillProcessesIn(string name)
    {
        // `ip netns pids` lists the processes whose network namespace is this one. One pass can miss a child forked
        // meanwhile, so repeat (bounded) until none is left.
        for (int round = 0; round < 5; round++)
        {
            (int code, string output) = NetCommand.RunIp(["netns", "pids", name], standardOutput: true);
            if (code != 0)
            {
                return;
            }
            bool any = false;
            foreach (string line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                if (int.TryParse(line, NumberStyles.None, CultureInfo.InvariantCulture, out int pid) && pid != Environment.ProcessId)
                {
                    any |= ProcessSignal.Send(pid, SigKill);
                }
            }
            if (!any)
            {
                return;
            }
            Thread.Sleep(50);
        }
    }
}
