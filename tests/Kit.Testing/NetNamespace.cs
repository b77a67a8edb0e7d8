namespace Kit.Testing;

/// <summary>
/// A fresh, uniquely named network namespace (<c>ip netns add</c>) holding only a loopback interface (down).
/// Dispose kills whatever still runs inside and deletes it, also when the test failed. Needs root.
/// </summary>
public sealed class NetNamespace : IDisposable
{
    private const string Prefix = "kit-t";
    private static int s_counter;
    private readonly List<RunningProcess> _started = [];
    private int _disposed;

    private NetNamespace(string name) => Name = name;

    /// <summary>The namespace name, <c>kit-t&lt;pid&gt;-&lt;n&gt;</c>; usable with <c>ip netns exec</c> and <c>nsenter --net=/run/netns/NAME</c>.</summary>
    public string Name { get; }

    /// <summary>The bind-mounted namespace file, for setns(2) or <c>nsenter --net=</c>.</summary>
    public string Path => $"/run/netns/{Name}";

    /// <summary>Creates the namespace, first removing ones left behind by test processes that died.</summary>
    public static NetNamespace Create()
    {
        RemoveOrphans();
        string name = $"{Prefix}{Environment.ProcessId}-{Interlocked.Increment(ref s_counter)}";
        ProcessRunner.Run("ip", ["netns", "add", name], TimeSpan.FromSeconds(15)).EnsureSuccess();
        return new NetNamespace(name);
    }

    /// <summary>True if a namespace of that name exists.</summary>
    public static bool Exists(string name) => File.Exists($"/run/netns/{name}");

    /// <summary>Runs a program inside the namespace (<c>ip netns exec</c>) and waits for it.</summary>
    public Task<ProcessResult> RunAsync(string fileName, IEnumerable<string> arguments, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        ProcessRunner.RunAsync("ip", ["netns", "exec", Name, fileName, .. arguments], timeout, cancellationToken: cancellationToken);

    /// <summary>Runs <c>sh -c <paramref name="script"/></c> inside the namespace.</summary>
    public Task<ProcessResult> ShellAsync(string script, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        RunAsync("/bin/sh", ["-c", script], timeout, cancellationToken);

    /// <summary>Starts a long-running program inside the namespace (a server); dispose it or the namespace to stop it.</summary>
    public RunningProcess Start(string fileName, IEnumerable<string> arguments)
    {
        RunningProcess process = ProcessRunner.Start("ip", ["netns", "exec", Name, fileName, .. arguments]);
        lock (_started)
        {
            _started.Add(process);
        }
        return process;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            lock (_started)
            {
                foreach (RunningProcess process in _started)
                {
                    process.Dispose();
                }
            }
            Delete(Name);
        }
    }

    private static void Delete(string name)
    {
        // Processes still inside would keep the namespace alive after its name is gone.
        ProcessResult pids = ProcessRunner.Run("ip", ["netns", "pids", name], TimeSpan.FromSeconds(15));
        foreach (string pid in pids.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            ProcessRunner.Run("kill", ["-9", pid], TimeSpan.FromSeconds(5));
        }
        ProcessRunner.Run("ip", ["netns", "delete", name], TimeSpan.FromSeconds(15));
    }

    private static void RemoveOrphans()
    {
        if (!Directory.Exists("/run/netns"))
        {
            return;
        }
        foreach (string path in Directory.GetFiles("/run/netns", Prefix + "*"))
        {
            string name = System.IO.Path.GetFileName(path);
            string pid = name[Prefix.Length..].Split('-')[0];
            if (int.TryParse(pid, out int owner) && owner != Environment.ProcessId && !Directory.Exists($"/proc/{owner}"))
            {
                Delete(name);
            }
        }
    }
}
