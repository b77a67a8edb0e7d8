using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Kit.Linux;

namespace Kit.DataKit.Store;

/// <summary>What a git command left behind.</summary>
public sealed record GitResult(int ExitCode, string StandardOutput, string StandardError)
{
    /// <summary>The last non-empty line of standard error: git's own one-line reason (fatal: ..., error: ...).</summary>
    public string Reason
    {
        get
        {
            string[] lines = StandardError.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return lines.Length == 0 ? $"git exited with code {ExitCode}" : lines[^1];
        }
    }
}

/// <summary>A git command did not finish within its time limit, or was cancelled (Tflush); it was killed.</summary>
public sealed class GitTimeoutException(string message, bool cancelled) : Exception(message)
{
    /// <summary>True when the caller cancelled (a 9P Tflush), false when the time limit ran out.</summary>
    public bool Cancelled { get; } = cancelled;
}

/// <summary>
/// Runs the git CLI against the store's git directory for the network half of remotes (fetch, push).
/// </summary>
/// <remarks>
/// Why the CLI and not LibGit2Sharp here: LibGit2Sharp's native build has no ssh transport, and its fetch runs inside
/// this process under the store lock with no way to kill it; the CLI speaks every transport the operator may allow
/// (a path, file://, git://, smart http(s) and ssh with the operator's keys), and a separate process can be given a
/// time limit and killed. The store is an ordinary git repository, so git writes the fetched objects and the
/// private refs directly (objects by temp file and rename, refs by lock file), safely beside libgit2, which rescans the
/// packs when it misses an object. Nothing here takes the store lock.
///
/// The child gets a clean environment: only PATH, HOME (ssh finds ~/.ssh there), the ssh agent and proxy variables
/// pass through; system and global git config are ignored (no url.insteadOf, credential helper or alias can change
/// what runs); GIT_ALLOW_PROTOCOL limits transports to file, git, http, https and ssh (never ext:: or fd::, which
/// run commands); GIT_TERMINAL_PROMPT=0 and ssh's BatchMode stop any prompt. It runs in its own session (setsid), so
/// it has no controlling terminal to prompt on and its process group (git plus ssh or git-remote-http) can be killed
/// as one at the time limit or on cancellation.
/// </remarks>
public sealed class GitCli
{
    /// <summary>Transports a remote may use (git-config(1) protocol.allow; GIT_ALLOW_PROTOCOL is colon-separated).</summary>
    public const string AllowedProtocols = "file:git:http:https:ssh";

    private static readonly string[] PassThrough =
    [
        "PATH", "HOME", "SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "GIT_SSH", "http_proxy", "https_proxy", "no_proxy",
        "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    ];

    private const int MaxCaptured = 64 * 1024;
    private readonly string _gitDir;
    private readonly bool _syncWrites;
    private readonly IReadOnlyDictionary<string, string> _environment;

    /// <param name="gitDir">The store's git directory.</param>
    /// <param name="timeout">How long one command may run before its process group is killed.</param>
    /// <param name="environment">Variables set for every command on top of the clean environment (GIT_SSH_COMMAND in tests).</param>
    /// <param name="syncWrites">
    /// The store's <see cref="GitStore.SyncWrites"/>: git then fsyncs what it fetches (packs, refs) before it exits, as
    /// libgit2 does for DataKit's own writes, so a branch later moved to a fetched commit never names objects a power
    /// cut could take (git-config(1) core.fsync, git 2.36+).
    /// </param>
    public GitCli(string gitDir, TimeSpan timeout, IReadOnlyDictionary<string, string>? environment = null, bool syncWrites = false)
    {
        _syncWrites = syncWrites;
        _gitDir = gitDir;
        Timeout = timeout;
        _environment = environment ?? new Dictionary<string, string>();
    }

    public TimeSpan Timeout { get; }

    /// <summary>
    /// Runs <c>git ARGS</c> in the store. Throws <see cref="GitTimeoutException"/> after killing the process group when
    /// the time limit passes or <paramref name="ct"/> is cancelled; otherwise returns whatever git exited with.
    /// </summary>
    public async Task<GitResult> RunAsync(IReadOnlyList<string> args, CancellationToken ct)
    {
        // setsid(1) without --fork: a child .NET starts is never a process-group leader, so setsid() succeeds in place
        // and execs git, which keeps the pid; git is then the leader of a new session and group whose id is its pid.
        var psi = new ProcessStartInfo("setsid")
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        psi.ArgumentList.Add("git");
        psi.ArgumentList.Add("--git-dir=" + _gitDir);
        foreach (string c in (string[])[
            // The store is ours whoever owns the files (git 2.36+ refuses "dubious ownership" otherwise).
            "safe.directory=" + _gitDir,
            // No hook of the store's runs (reference-transaction fires on fetch), no background gc or maintenance
            // repacks the store under libgit2, no commit-graph writes; no credential helper asks anything.
            "core.hooksPath=/dev/null", "gc.auto=0", "maintenance.auto=false", "fetch.writeCommitGraph=false",
            "credential.helper=", "protocol.allow=never",
        ])
        {
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(c);
        }
        if (_syncWrites)
        {
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add("core.fsync=all");
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add("core.fsyncMethod=fsync");
        }
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment.Clear();
        foreach (string name in PassThrough)
        {
            if (Environment.GetEnvironmentVariable(name) is string value)
            {
                psi.Environment[name] = value;
            }
        }
        psi.Environment["LC_ALL"] = "C";
        psi.Environment["GIT_CONFIG_NOSYSTEM"] = "1";
        psi.Environment["GIT_CONFIG_GLOBAL"] = "/dev/null";
        psi.Environment["GIT_ALLOW_PROTOCOL"] = AllowedProtocols;
        psi.Environment["GIT_TERMINAL_PROMPT"] = "0";
        psi.Environment["GIT_PROTOCOL_FROM_USER"] = "0";
        if (!psi.Environment.ContainsKey("GIT_SSH_COMMAND") && !psi.Environment.ContainsKey("GIT_SSH"))
        {
            psi.Environment["GIT_SSH_COMMAND"] = "ssh -o BatchMode=yes";
        }
        foreach ((string name, string value) in _environment)
        {
            psi.Environment[name] = value;
        }

        using var process = new Process { StartInfo = psi };
        process.Start();
        int pgid = process.Id;
        process.StandardInput.Close(); // nothing to read: a prompt that slipped through gets EOF
        Task<string> stdout = ReadBoundedAsync(process.StandardOutput);
        Task<string> stderr = ReadBoundedAsync(process.StandardError);
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(ct);
        limit.CancelAfter(Timeout);
        try
        {
            await process.WaitForExitAsync(limit.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The whole group: git, and the ssh or git-remote-http it started, which hold the network connection.
            ProcessSignal.SendToGroup(pgid, (PosixSignal)9);
            using var reap = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            try
            {
                await process.WaitForExitAsync(reap.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
            bool cancelled = ct.IsCancellationRequested;
            throw new GitTimeoutException(cancelled ? "cancelled" : $"timed out after {Timeout.TotalSeconds:0.#} s", cancelled);
        }
        // The pipes close when the last process holding them exits. One that outlives git (it should not) is still a
        // member of git's group, so the group id is still ours to signal: never a recycled one.
        Task output = Task.WhenAll(stdout, stderr);
        if (await Task.WhenAny(output, Task.Delay(TimeSpan.FromSeconds(5), CancellationToken.None)).ConfigureAwait(false) != output)
        {
            ProcessSignal.SendToGroup(pgid, (PosixSignal)9);
        }
        return new GitResult(process.ExitCode, await stdout.ConfigureAwait(false), await stderr.ConfigureAwait(false));
    }

    /// <summary>Reads a stream to its end, keeping at most the last 64 KiB: a chatty or hostile remote cannot fill memory.</summary>
    private static async Task<string> ReadBoundedAsync(StreamReader reader)
    {
        var kept = new StringBuilder();
        char[] buffer = new char[4096];
        int n;
        while ((n = await reader.ReadAsync(buffer).ConfigureAwait(false)) > 0)
        {
            kept.Append(buffer, 0, n);
            if (kept.Length > MaxCaptured)
            {
                kept.Remove(0, kept.Length - MaxCaptured);
            }
        }
        return kept.ToString();
    }
}
