using System.Diagnostics;
using System.Net;
using System.Text;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.DataKit.Tests;

/// <summary>
/// Remotes against real git servers on loopback (a bare repository on disk, git daemon, git http-backend, sshd), the
/// operator's allow-list, a remote that never answers, and two servers replicating through a bare repository.
/// </summary>
[Trait("Tier", "Real")]
public sealed class RemoteTests : IAsyncLifetime
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-remotes-"); // 0700, ours alone
    private readonly List<IAsyncDisposable> _servers = [];
    private readonly List<IDisposable> _others = [];

    private string Root => _dir.FullName;

    public ValueTask InitializeAsync() => ValueTask.CompletedTask;

    public async ValueTask DisposeAsync()
    {
        foreach (IAsyncDisposable s in _servers)
        {
            await s.DisposeAsync();
        }
        foreach (IDisposable d in _others)
        {
            d.Dispose();
        }
        _dir.Delete(recursive: true);
    }

    private sealed class Node(DataKitServer server, NinePClient client) : IAsyncDisposable
    {
        public DataKitServer Server { get; } = server;
        public NinePClient C { get; } = client;

        public async ValueTask DisposeAsync()
        {
            await C.DisposeAsync();
            await Server.DisposeAsync();
        }
    }

    private async Task<Node> StartAsync(string name, DataKitOptions settings)
    {
        var server = new DataKitServer(Path.Combine(Root, name), settings: settings);
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var ep = (IPEndPoint)server.Listen(any!);
        var node = new Node(server, await NinePClient.ConnectAsync(new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}")));
        _servers.Add(node);
        return node;
    }

    private static Task<NinePClient> ConnectAgain(Node n)
    {
        var ep = (IPEndPoint)n.Server.NineP.EndPoints[0];
        return NinePClient.ConnectAsync(new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}"));
    }

    private static DataKitOptions Allow(params string[] prefixes) => DataKitOptions.Default with
    {
        AllowRemotes = new RemotePolicy(prefixes),
        RemoteTimeout = TimeSpan.FromSeconds(30),
        ReplicateInterval = TimeSpan.FromMilliseconds(300),
    };

    private string BareRepo(string name)
    {
        string path = Path.Combine(Root, name);
        GitServers.Git("init", "-q", "--bare", "-b", "master", path);
        return path;
    }

    /// <summary>Commits one file on a branch through a transaction; returns the new head.</summary>
    private static async Task<string> CommitFile(NinePClient c, string branch, string file, string content)
    {
        await c.MkdirAsync("branch", branch);
        string tx = $"branch/{branch}/transactions/t{Guid.NewGuid():N}";
        await c.MkdirAsync($"branch/{branch}/transactions", tx[(tx.LastIndexOf('/') + 1)..]);
        try
        {
            await c.WriteTextAsync($"{tx}/rw/{file}", content);
        }
        catch (NinePException)
        {
            await c.CreateFileAsync($"{tx}/rw", file, Encoding.UTF8.GetBytes(content));
        }
        await c.WriteTextAsync($"{tx}/msg", $"{file}={content}");
        await c.WriteTextAsync($"{tx}/ctl", "commit");
        return (await c.ReadTextAsync($"branch/{branch}/head")).Trim();
    }

    private static async Task<string> WaitForRemoteRef(string bare, string branch, string expected, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        string now = "";
        while (clock.Elapsed < timeout)
        {
            ProcessResult r = await ProcessRunner.RunAsync("git", ["--git-dir=" + bare, "rev-parse", "--verify", "--quiet", $"refs/heads/{branch}"]);
            now = r.StandardOutput.Trim();
            if (now == expected)
            {
                return now;
            }
            await Task.Delay(20);
        }
        return now;
    }

    private static async Task<NinePException> Refused(Func<Task> action) => await Assert.ThrowsAsync<NinePException>(action);

    // ---------- push and fetch through every transport ----------

    [Theory]
    [InlineData("path")]
    [InlineData("file")]
    [InlineData("daemon")]
    [InlineData("http")]
    [InlineData("ssh")]
    public async Task PushAndFetchThroughEveryTransport(string transport)
    {
        string served = Path.Combine(Root, "served");
        Directory.CreateDirectory(served);
        string bare = Path.Combine(served, "remote.git");
        GitServers.Git("init", "-q", "--bare", "-b", "master", bare);
        string url, prefix;
        var env = new Dictionary<string, string>();
        switch (transport)
        {
            case "path":
                (url, prefix) = (bare, served + "/");
                break;
            case "file":
                (url, prefix) = ("file://" + bare, "file://" + served);
                break;
            case "daemon":
                GitDaemon daemon = await GitServers.StartDaemonAsync(served);
                _others.Add(daemon);
                (url, prefix) = (daemon.Url("remote.git"), $"git://127.0.0.1:{daemon.Port}/");
                break;
            case "http":
                GitHttpServer http = GitServers.StartHttp(served);
                _others.Add(http);
                (url, prefix) = (http.Url("remote.git"), $"http://127.0.0.1:{http.Port}/");
                break;
            default:
                string keys = Path.Combine(Root, "ssh");
                Directory.CreateDirectory(keys);
                SshServer ssh = await GitServers.StartSshAsync(keys);
                _others.Add(ssh);
                env["GIT_SSH_COMMAND"] = ssh.SshCommand;
                (url, prefix) = (ssh.Url(bare), ssh.Url(served));
                break;
        }
        Node a = await StartAsync("store", Allow(prefix) with { RemoteEnvironment = env });
        NinePClient c = a.C;
        string head = await CommitFile(c, "master", "greeting", "hello");
        await c.MkdirAsync("remotes", "origin");
        Assert.Equal(["url", "fetch", "head", "push", "push-branches", "sync-branches", "conflicts", "error"], await c.ListAsync("remotes/origin"));
        await c.WriteTextAsync("remotes/origin/url", url);

        // push: the remote's branch is the local head.
        await c.WriteTextAsync("remotes/origin/push", "master");
        Assert.Equal(head, GitServers.Git("--git-dir=" + bare, "rev-parse", "master"));
        Assert.Equal("hello", GitServers.Git("--git-dir=" + bare, "cat-file", "blob", "master:greeting"));
        GitServers.Git("--git-dir=" + bare, "fsck", "--strict", "--no-dangling");

        // fetch: a commit made on the remote by plain git shows on head (blocking until then) and in snapshots/.
        string theirs = GitServers.Git("--git-dir=" + bare, "commit-tree", "-p", "master", "-m", "made on the remote", "master^{tree}");
        GitServers.Git("--git-dir=" + bare, "update-ref", "refs/heads/other", theirs);
        var headStream = await ServerSuiteTests.OpenStream(c, "remotes/origin/head");
        Task<string> first = headStream.Next();
        Assert.False(first.IsCompleted);
        await c.WriteTextAsync("remotes/origin/fetch", "other");
        Assert.Equal(theirs + "\n", await first.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.StartsWith("made on the remote\n", await c.ReadTextAsync($"snapshots/{theirs}/msg"), StringComparison.Ordinal);
        Assert.Equal(["master"], await c.ListAsync("branch")); // a fetch moves no local branch
        Assert.Equal(theirs, GitServers.Git("--git-dir=" + a.Server.Store.GitDir, "rev-parse", "refs/remotes/origin/other"));

        // auto-push: after each commit on a branch named in push-branches, the remote has it.
        await c.WriteTextAsync("remotes/origin/push-branches", "master\n");
        string next = await CommitFile(c, "master", "greeting", "again");
        Assert.Equal(next, await WaitForRemoteRef(bare, "master", next, TimeSpan.FromSeconds(20)));
        Assert.Equal("", await c.ReadTextAsync("remotes/origin/error"));

        // A push the remote refuses as non-fast-forward is an error (EAGAIN), never a forced overwrite.
        string elsewhere = GitServers.Git("--git-dir=" + bare, "commit-tree", "-p", next, "-m", "remote moves on", "master^{tree}");
        GitServers.Git("--git-dir=" + bare, "update-ref", "refs/heads/master", elsewhere);
        await c.WriteTextAsync("remotes/origin/push-branches", "");
        string diverged = await CommitFile(c, "master", "greeting", "diverged");
        NinePException e = await Refused(() => c.WriteTextAsync("remotes/origin/push", "master"));
        Assert.Equal(Errno.EAGAIN, e.Errno);
        Assert.Contains("rejected", e.Message, StringComparison.Ordinal);
        Assert.Equal(elsewhere, GitServers.Git("--git-dir=" + bare, "rev-parse", "master"));
        Assert.NotEqual(diverged, elsewhere);

        // Auto-push meets the same refusal: reported in error, which idle rounds after it do not clear; not forced.
        await c.WriteTextAsync("remotes/origin/push-branches", "master");
        Assert.Contains("rejected", await WaitForText(c, "remotes/origin/error", t => t.Contains("rejected", StringComparison.Ordinal), TimeSpan.FromSeconds(20)), StringComparison.Ordinal);
        await Task.Delay(600); // the head poller's rounds come and go
        Assert.Contains("rejected", await c.ReadTextAsync("remotes/origin/error"), StringComparison.Ordinal);
        Assert.Equal(elsewhere, GitServers.Git("--git-dir=" + bare, "rev-parse", "master"));
    }

    // ---------- the operator's allow-list ----------

    [Fact]
    public async Task UrlsOutsideTheAllowListAreRefusedWithEacces()
    {
        string allowed = BareRepo("repo");
        BareRepo("repo-evil");
        Node a = await StartAsync("store", Allow("file://" + allowed));
        NinePClient c = a.C;
        await c.MkdirAsync("remotes", "r");
        string[] refused =
        [
            "file://" + allowed + "-evil",           // a prefix of the name, not of the path
            allowed + "-evil",                       // the same as a plain path
            "file://" + allowed + "/../repo-evil",   // climbing out
            "file://" + allowed + "/./x",
            "file://" + allowed.ToUpperInvariant(),
            "file://" + allowed + "%2f..%2frepo-evil",
            "ext::sh -c touch% " + Path.Combine(Root, "pwned"),
            "ext::" + allowed,
            "fd::3",
            "file::" + allowed,
            "git://127.0.0.1/repo",
            "http://127.0.0.1/" + allowed,
            "-uupload-pack=touch " + Path.Combine(Root, "pwned"),
            "repo",                                  // relative to the server's directory
            "/etc/passwd",
            "/root/.ssh",
        ];
        foreach (string url in refused)
        {
            NinePException e = await Refused(() => c.WriteTextAsync("remotes/r/url", url));
            Assert.True(e.Errno == Errno.EACCES, $"{url}: errno {e.Errno} {e.Message}");
            Assert.Equal("", await c.ReadTextAsync("remotes/r/url")); // the refused text was not kept
        }
        Assert.False(File.Exists(Path.Combine(Root, "pwned")));

        // Allowed: the prefix itself, and below it at a path boundary.
        await c.WriteTextAsync("remotes/r/url", "file://" + allowed);
        Assert.Equal("file://" + allowed, await c.ReadTextAsync("remotes/r/url"));
        await c.WriteTextAsync("remotes/r/url", "file://" + allowed + "/");

        // A server with no --allow-remote allows nothing, the prefix above included.
        Node b = await StartAsync("other", DataKitOptions.Default);
        await b.C.MkdirAsync("remotes", "r");
        Assert.Equal(Errno.EACCES, (await Refused(() => b.C.WriteTextAsync("remotes/r/url", "file://" + allowed))).Errno);

        // Under any policy, git itself is given no transport but file, git, http(s) and ssh (the second wall).
        var git = new GitCli(a.Server.Store.GitDir, TimeSpan.FromSeconds(20));
        GitResult r = await git.RunAsync(["ls-remote", "ext::sh -c touch% " + Path.Combine(Root, "pwned")], CancellationToken.None);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("transport 'ext' not allowed", r.StandardError, StringComparison.Ordinal);
        Assert.False(File.Exists(Path.Combine(Root, "pwned")));
    }

    [Fact]
    public void PolicyChecksPrefixesAtPathBoundaries()
    {
        var p = new RemotePolicy(["http://127.0.0.1:8080", "git@example.com:", "ssh://git@example.com/srv/"]);
        Assert.Null(p.Refusal("http://127.0.0.1:8080/repo.git"));
        Assert.NotNull(p.Refusal("http://127.0.0.1:80801/repo.git"));
        Assert.NotNull(p.Refusal("http://127.0.0.1:8080@evil.example/repo.git"));
        Assert.NotNull(p.Refusal("http://127.0.0.1:8080.evil.example/repo.git"));
        Assert.Null(p.Refusal("git@example.com:team/repo.git"));
        Assert.NotNull(p.Refusal("git@example.com.evil:team/repo.git"));
        Assert.Null(p.Refusal("ssh://git@example.com/srv/repo"));
        Assert.NotNull(p.Refusal("ssh://git@example.com/srv/../etc"));
        Assert.NotNull(p.Refusal("ssh://git@example.com/srvx"));
        Assert.Throws<ArgumentException>(() => new RemotePolicy(["ext::sh"]));
        Assert.Throws<ArgumentException>(() => new RemotePolicy(["relative/dir"]));
    }

    // ---------- a remote that never answers ----------

    [Fact]
    public async Task AHungRemoteStallsNoOtherClientTimesOutAndFlushKillsIt()
    {
        using var silent = new SilentListener();
        string url = $"git://127.0.0.1:{silent.Port}/repo.git";
        Node a = await StartAsync("store", Allow($"git://127.0.0.1:{silent.Port}/") with { RemoteTimeout = TimeSpan.FromSeconds(4) });
        await CommitFile(a.C, "master", "f", "before");
        await a.C.MkdirAsync("remotes", "hung");
        await a.C.WriteTextAsync("remotes/hung/url", url);

        var clock = Stopwatch.StartNew();
        Task fetch = a.C.WriteTextAsync("remotes/hung/fetch", "master");
        while (silent.Accepted == 0 && clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(20);
        }
        Assert.Equal(1, silent.Accepted);
        Assert.False(fetch.IsCompleted);

        // Meanwhile another client reads and commits, each within a second.
        await using NinePClient other = await ConnectAgain(a);
        var op = Stopwatch.StartNew();
        string head = (await other.ReadTextAsync("branch/master/head")).Trim();
        Assert.Equal("before", await other.ReadTextAsync("branch/master/ro/f"));
        Assert.True(op.Elapsed < TimeSpan.FromSeconds(1), $"read took {op.Elapsed}");
        op.Restart();
        string after = await CommitFile(other, "master", "f", "during");
        Assert.True(op.Elapsed < TimeSpan.FromSeconds(1), $"commit took {op.Elapsed}");
        Assert.NotEqual(head, after);
        Assert.False(fetch.IsCompleted);

        // The fetch ends at the time limit with a clear error, and git's connection is gone.
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => fetch.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal(110u, e.Errno); // ETIMEDOUT
        Assert.Contains("timed out after 4 s", e.Message, StringComparison.Ordinal);
        Assert.InRange(clock.Elapsed.TotalSeconds, 3.5, 10);
        await WaitUntil(() => silent.Closed == 1, TimeSpan.FromSeconds(5));

        // A Tflush cancels a fetch long before its limit: the write's reply is dropped, Rflush comes once git is killed.
        await a.Server.DisposeAsync(); // (a fresh server with a long limit)
        _servers.Remove(a);
        Node b = await StartAsync("store2", Allow($"git://127.0.0.1:{silent.Port}/") with { RemoteTimeout = TimeSpan.FromSeconds(120) });
        await b.C.MkdirAsync("remotes", "hung");
        await b.C.WriteTextAsync("remotes/hung/url", url);
        uint fid = await b.C.WalkAsync("remotes/hung/fetch");
        await b.C.OpenAsync(fid, P9.OWRITE);
        using var cancel = new CancellationTokenSource();
        clock.Restart();
        Task write = b.C.WriteAsync(fid, 0, "master"u8.ToArray(), cancel.Token);
        await WaitUntil(() => silent.Accepted == 2, TimeSpan.FromSeconds(10));
        Assert.False(write.IsCompleted);
        await cancel.CancelAsync(); // the client sends Tflush and waits for Rflush
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => write.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"flush took until {clock.Elapsed}");
        await WaitUntil(() => silent.Closed == 2, TimeSpan.FromSeconds(5));
        // The connection is still good.
        Assert.Equal("", await b.C.ReadTextAsync("remotes/hung/error"));
    }

    private static async Task WaitUntil(Func<bool> condition, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            Assert.True(clock.Elapsed < timeout, "condition not reached in time");
            await Task.Delay(20);
        }
    }

    // ---------- replication ----------

    [Fact]
    public async Task TwoServersReplicateABranchThroughABareRemote()
    {
        string bare = BareRepo("shared.git");
        Node a = await StartAsync("a", Allow(bare));
        Node b = await StartAsync("b", Allow(bare));
        foreach (Node n in new[] { a, b })
        {
            await n.C.MkdirAsync("remotes", "origin");
            await n.C.WriteTextAsync("remotes/origin/url", bare);
            await n.C.WriteTextAsync("remotes/origin/sync-branches", "master\n");
        }
        await b.C.MkdirAsync("branch", "master");
        var live = await ServerSuiteTests.OpenStream(b.C, "branch/master/head.live");
        Assert.Equal("\n", await live.Next());

        // A commit on A shows on B's head.live within seconds.
        var clock = Stopwatch.StartNew();
        string first = await CommitFile(a.C, "master", "a.txt", "from a");
        Assert.Equal(first + "\n", await NextNonEmpty(live, TimeSpan.FromSeconds(15)));
        TestContext.Current.TestOutputHelper?.WriteLine($"A's commit on B's head.live after {clock.ElapsedMilliseconds} ms");
        Assert.Equal("from a", await b.C.ReadTextAsync("branch/master/ro/a.txt"));

        // And back: B's commit reaches A.
        string second = await CommitFile(b.C, "master", "b.txt", "from b");
        Assert.Equal(second, await WaitForHead(a.C, "master", second, TimeSpan.FromSeconds(15)));

        // Both moved while apart, on different files: B merges (DataKit's 3-way merge) and both end on the merge.
        await Pause(b);
        string onB = await CommitFile(b.C, "master", "b.txt", "b while apart");
        string onA = await CommitFile(a.C, "master", "a.txt", "a while apart");
        Assert.Equal(onA, await WaitForRemoteRef(bare, "master", onA, TimeSpan.FromSeconds(15)));
        await b.C.WriteTextAsync("remotes/origin/sync-branches", "master");
        string merged = await WaitForHeadWhere(b.C, "master", h => h != onB, TimeSpan.FromSeconds(15));
        Assert.Equal([onB, onA], (await b.C.ReadTextAsync($"snapshots/{merged}/parents")).Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(merged, await WaitForHead(a.C, "master", merged, TimeSpan.FromSeconds(15)));
        Assert.Equal("a while apart", await a.C.ReadTextAsync("branch/master/ro/a.txt"));
        Assert.Equal("b while apart", await a.C.ReadTextAsync("branch/master/ro/b.txt"));

        // Both changed the same file while apart: nothing is lost. B keeps its commit, reports the conflict with A's
        // commit (kept on a ref), and A keeps its own; once B merges A's commit in a transaction, both converge.
        await Pause(b);
        string mineB = await CommitFile(b.C, "master", "a.txt", "b's version");
        string mineA = await CommitFile(a.C, "master", "a.txt", "a's version");
        Assert.Equal(mineA, await WaitForRemoteRef(bare, "master", mineA, TimeSpan.FromSeconds(15)));
        await b.C.WriteTextAsync("remotes/origin/sync-branches", "master");
        string conflicts = await WaitForText(b.C, "remotes/origin/conflicts", t => t.Length > 0, TimeSpan.FromSeconds(15));
        Assert.Equal($"master {mineA}\n", conflicts);
        Assert.Equal("", await b.C.ReadTextAsync("remotes/origin/error"));
        Assert.Equal(mineB, (await b.C.ReadTextAsync("branch/master/head")).Trim());
        Assert.Equal(mineA, GitServers.Git("--git-dir=" + b.Server.Store.GitDir, "rev-parse", "refs/datakit/conflicts/origin/master"));
        Assert.Equal(mineA, GitServers.Git("--git-dir=" + bare, "rev-parse", "master"));

        await b.C.MkdirAsync("branch/master/transactions", "fix");
        string tx = "branch/master/transactions/fix";
        await b.C.WriteTextAsync($"{tx}/merge", mineA);
        Assert.Equal("a.txt\n", await b.C.ReadTextAsync($"{tx}/conflicts"));
        await b.C.WriteTextAsync($"{tx}/rw/a.txt", "both");
        await b.C.WriteTextAsync($"{tx}/msg", "resolve");
        await b.C.WriteTextAsync($"{tx}/ctl", "commit");
        string resolved = (await b.C.ReadTextAsync("branch/master/head")).Trim();
        Assert.Equal(resolved, await WaitForHead(a.C, "master", resolved, TimeSpan.FromSeconds(15)));
        Assert.Equal("both", await a.C.ReadTextAsync("branch/master/ro/a.txt"));
        Assert.Equal("", await WaitForText(b.C, "remotes/origin/conflicts", t => t.Length == 0, TimeSpan.FromSeconds(15)));
        GitServers.Git("--git-dir=" + bare, "fsck", "--strict", "--no-dangling");
    }

    /// <summary>
    /// Stops B's replication: empties sync-branches, then a fetch, which waits for any round of the background loop
    /// that began before the change (they take turns on the remote), so none can still push.
    /// </summary>
    private static async Task Pause(Node n)
    {
        await n.C.WriteTextAsync("remotes/origin/sync-branches", "");
        await n.C.WriteTextAsync("remotes/origin/fetch", "master");
    }

    private static async Task<string> NextNonEmpty(ServerSuiteTests.StreamReader live, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            string line = await live.Next().WaitAsync(timeout - clock.Elapsed);
            if (line.Trim().Length > 0)
            {
                return line;
            }
        }
    }

    private static Task<string> WaitForHead(NinePClient c, string branch, string expected, TimeSpan timeout) =>
        WaitForHeadWhere(c, branch, h => h == expected, timeout);

    private static async Task<string> WaitForHeadWhere(NinePClient c, string branch, Func<string, bool> ok, TimeSpan timeout) =>
        (await WaitForText(c, $"branch/{branch}/head", t => ok(t.Trim()), timeout)).Trim();

    private static async Task<string> WaitForText(NinePClient c, string path, Func<string, bool> ok, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        string text;
        while (!ok(text = await c.ReadTextAsync(path)) && clock.Elapsed < timeout)
        {
            await Task.Delay(50);
        }
        return text;
    }
}
