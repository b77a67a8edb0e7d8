using System.Diagnostics;
using System.Globalization;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Data;

/// <summary>
/// Issue 16, remotes through the kit binary: `kit data serve --allow-remote` lets a client auto-push to a bare
/// repository under the prefix and refuses one beside it with EACCES; a prefix that could never be safe is refused at
/// start with one line.
/// </summary>
public sealed class RemoteCliTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-remote-cli-");

    private string Root => _dir.FullName;

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public void AnUnsafePrefixIsRefusedAtStart()
    {
        ProcessResult r = KitCli.Run("data", "serve", "--git", Path.Combine(Root, "store"), "--listen-9p", "tcp://127.0.0.1:0",
            "--allow-remote", "ext::id");
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("--allow-remote ext::id: remote helper URLs", r.StandardError, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", r.Output, StringComparison.Ordinal);
        Assert.False(Directory.Exists(Path.Combine(Root, "store")));
    }

    [Fact]
    public async Task AutoPushToAnAllowedBareRepositoryAndRefusalBesideIt()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string served = Path.Combine(Root, "served");
        string bare = Path.Combine(served, "repo.git");
        GitServers.Git("init", "-q", "--bare", "-b", "master", bare);
        GitServers.Git("init", "-q", "--bare", "-b", "master", Path.Combine(Root, "outside.git"));
        int port = LoopbackPort.Free();
        using RunningProcess serve = KitCli.Start("data", "serve", "--git", Path.Combine(Root, "store"),
            "--listen-9p", $"tcp://127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}", "--allow-remote", served + "/",
            "--remote-timeout", "30");
        await serve.WaitForLineAsync(l => l.Contains("serving", StringComparison.Ordinal), TimeSpan.FromSeconds(60), cancel);
        ListenAddress.TryParse($"tcp://127.0.0.1:{port}", out ListenAddress? address, out _);
        await using NinePClient c = await NinePClient.ConnectAsync(address!, ct: cancel);

        await c.MkdirAsync("remotes", "origin", cancel);
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => c.WriteTextAsync("remotes/origin/url", Path.Combine(Root, "outside.git"), cancel));
        Assert.Equal(Errno.EACCES, e.Errno);
        await c.WriteTextAsync("remotes/origin/url", bare, cancel);
        await c.WriteTextAsync("remotes/origin/push-branches", "master", cancel);

        await c.MkdirAsync("branch", "master", cancel);
        await c.MkdirAsync("branch/master/transactions", "t", cancel);
        await c.CreateFileAsync("branch/master/transactions/t/rw", "hello", "pushed by kit\n"u8.ToArray(), ct: cancel);
        await c.WriteTextAsync("branch/master/transactions/t/ctl", "commit", cancel);
        string head = (await c.ReadTextAsync("branch/master/head", cancel)).Trim();

        var clock = Stopwatch.StartNew();
        string remote = "";
        while (clock.Elapsed < TimeSpan.FromSeconds(20) && remote != head)
        {
            remote = ProcessRunner.Run("git", ["--git-dir=" + bare, "rev-parse", "--verify", "--quiet", "refs/heads/master"]).StandardOutput.Trim();
            await Task.Delay(50, cancel);
        }
        Assert.True(remote == head, $"the remote has {remote}, not {head}; error: {await c.ReadTextAsync("remotes/origin/error", cancel)}\n{serve.StandardError}");
        Assert.Equal("pushed by kit\n", GitServers.Git("--git-dir=" + bare, "cat-file", "blob", "master:hello") + "\n");
    }
}
