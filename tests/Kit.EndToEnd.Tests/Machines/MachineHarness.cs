using System.Globalization;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// A private world for `kit up` and friends: its own data and runtime directories (XDG_DATA_HOME, XDG_RUNTIME_DIR, so
/// the machines and the DataKit store are the test's alone; the image cache under $HOME is shared so that it is built
/// once), a loopback DNS upstream (never the machine's resolv.conf) and the kit under test. Disposing brings every
/// machine down by force and removes the directories.
/// </summary>
public sealed class MachineHarness : IDisposable
{
    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("kit-machine-");

    public MachineHarness()
    {
        Data = Directory.CreateDirectory(Path.Combine(_root.FullName, "data")).FullName;
        Runtime = Directory.CreateDirectory(Path.Combine(_root.FullName, "run")).FullName;
        File.SetUnixFileMode(Runtime, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        Environment = new Dictionary<string, string?> { ["XDG_DATA_HOME"] = Data, ["XDG_RUNTIME_DIR"] = Runtime };
    }

    public TinyDnsServer Dns { get; } = new();

    public string Data { get; }

    public string Runtime { get; }

    public string Root => _root.FullName;

    public Dictionary<string, string?> Environment { get; }

    /// <summary>The DataKit store the machines record themselves in.</summary>
    public string Store => Path.Combine(Data, "kit", "datakit");

    public string DnsUpstream => Dns.EndPoint.ToString();

    public Task<ProcessResult> KitAsync(IEnumerable<string> args, TimeSpan timeout, string? stdin = null) =>
        ProcessRunner.RunAsync(KitCli.ExecutablePath, args, timeout, stdin, Environment, cancellationToken: TestContext.Current.CancellationToken);

    public async Task<ProcessResult> ExecAsync(string machine, string script, string? stdin = null)
    {
        return await KitAsync(["exec", machine, "--", "sh", "-c", script], TimeSpan.FromSeconds(120), stdin);
    }

    public async Task<JsonDocument> StatusAsync(string machine)
    {
        ProcessResult r = await KitAsync(["status", machine, "--json"], TimeSpan.FromSeconds(60));
        Assert.True(r.ExitCode == 0, r.ToString());
        return JsonDocument.Parse(r.StandardOutput);
    }

    /// <summary>Runs <paramref name="attempt"/> until it exits 0 (once a second) or <paramref name="timeout"/> passes; the last result.</summary>
    public static async Task<ProcessResult> RetryAsync(Func<Task<ProcessResult>> attempt, TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        ProcessResult result;
        do
        {
            result = await attempt();
            if (result.ExitCode == 0)
            {
                return result;
            }
            await Task.Delay(1000, TestContext.Current.CancellationToken);
        }
        while (clock.Elapsed < timeout);
        return result;
    }

    /// <summary>The daemon's pid from the machine's runtime directory, or null.</summary>
    public int? DaemonPid(string machine)
    {
        string pid = Path.Combine(Runtime, "kit", machine, "pid");
        return File.Exists(pid) && int.TryParse(File.ReadAllText(pid).Trim(), CultureInfo.InvariantCulture, out int p) ? p : null;
    }

    /// <summary>Processes whose command line mentions this harness's directories (daemons, QEMU, their helpers).</summary>
    public IReadOnlyList<string> LeftoverProcesses()
    {
        var found = new List<string>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid) || pid == System.Environment.ProcessId)
            {
                continue;
            }
            try
            {
                string cmdline = File.ReadAllText(Path.Combine(dir, "cmdline")).Replace('\0', ' ');
                string environ = File.ReadAllText(Path.Combine(dir, "environ")).Replace('\0', ' ');
                if (cmdline.Contains(_root.FullName, StringComparison.Ordinal) || environ.Contains(Data, StringComparison.Ordinal))
                {
                    found.Add($"{pid}: {cmdline}");
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
        return found;
    }

    public void Dispose()
    {
        string machines = Path.Combine(Data, "kit", "machines");
        if (Directory.Exists(machines))
        {
            foreach (string dir in Directory.EnumerateDirectories(machines))
            {
                _ = ProcessRunner.RunAsync(KitCli.ExecutablePath, ["down", Path.GetFileName(dir), "--force"], TimeSpan.FromSeconds(60), environment: Environment)
                    .GetAwaiter().GetResult();
            }
        }
        foreach (string leftover in LeftoverProcesses())
        {
            if (int.TryParse(leftover.AsSpan(0, leftover.IndexOf(':', StringComparison.Ordinal)), out int pid))
            {
                try
                {
                    System.Diagnostics.Process.GetProcessById(pid).Kill(entireProcessTree: true);
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException)
                {
                }
            }
        }
        Dns.Dispose();
        _root.Delete(recursive: true);
    }
}
