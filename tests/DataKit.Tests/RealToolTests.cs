using System.Diagnostics;
using System.Text;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.DataKit.Tests;

/// <summary>The store read and written by stock git, and the tree read by diod's 9P2000.L clients.</summary>
[Trait("Tier", "Real")]
public sealed class RealToolTests : DataKitTestBase
{
    [Fact]
    public async Task GitFsckLogShowAndCloneAcceptTheStoreWhileServing()
    {
        string tx = await Begin(C, "master");
        await C.MkdirAsync($"{tx}/rw", "src");
        await Create(C, $"{tx}/rw/src", "Makefile", "all: build");
        await Create(C, $"{tx}/rw", "run.sh", "#!/bin/sh\necho hi\n", exec: true);
        await C.CreateFileAsync($"{tx}/rw", "link", default, P9.DmSymlink | 0x1FF, "run.sh");
        string h1 = await Commit(C, tx, "first");
        tx = await Begin(C, "master", "t2");
        await Echo(C, $"{tx}/rw/src/Makefile", "all: test");
        string h2 = await Commit(C, tx, "second");

        Git("fsck", "--strict", "--no-dangling");
        Assert.Equal($"{h2} second\n{h1} first\n", Git("log", "--format=%H %s", "master"));
        Assert.Equal("all: test", Git("show", "master:src/Makefile"));
        Assert.Contains("datakit <datakit@mobyproject.org>", Git("show", "-s", "--format=%an <%ae>", h1), StringComparison.Ordinal);
        string clone = GitDir + "-clone";
        var (code, _, stderr) = await ProcessRunner.RunBinaryAsync("git", ["clone", "-q", "-b", "master", GitDir, clone]);
        Assert.True(code == 0, stderr);
        try
        {
            Assert.Equal("all: test", File.ReadAllText(Path.Combine(clone, "src", "Makefile")));
            Assert.True(OperatingSystem.IsWindows() || (File.GetUnixFileMode(Path.Combine(clone, "run.sh")) & UnixFileMode.UserExecute) != 0);
            Assert.Equal("run.sh", new FileInfo(Path.Combine(clone, "link")).LinkTarget);
        }
        finally
        {
            Directory.Delete(clone, true);
        }
    }

    [Fact]
    public async Task APlainGitCommitIsSeenByHeadLive()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "f", "one");
        string h1 = await Commit(C, tx, "one");
        var live = await ServerSuiteTests.OpenStream(C, "branch/master/head.live");
        Assert.Equal(h1 + "\n", await live.Next());
        Task<string> next = live.Next();
        // Another git writer: plumbing, since the repository has no checkout.
        string blob = Git("hash-object", "-w", "--stdin").Trim(); // empty blob from empty stdin
        string tree = Git("mktree").Trim();
        string commit = Git("commit-tree", tree, "-p", h1, "-m", "from git").Trim();
        Git("update-ref", "refs/heads/master", commit, h1);
        Assert.Equal(commit + "\n", await next.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(commit, (await Read(C, "branch/master/head")).Trim());
        Assert.NotEmpty(blob);
    }

    [Fact]
    public async Task DiodClientsListAndReadTheTree()
    {
        string tx = await Begin(C, "master");
        byte[] big = new byte[2 * 1024 * 1024 + 3];
        new Random(3).NextBytes(big);
        await C.CreateFileAsync($"{tx}/rw", "big", big);
        await Create(C, $"{tx}/rw", "hello", "hello\n");
        string head = await Commit(C, tx, "c");
        string server = $"127.0.0.1:{((System.Net.IPEndPoint)Address.EndPoint).Port}";
        var (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodls", ["-s", server, "-a", "/", "branch/master/ro"]);
        Assert.True(code == 0, stderr);
        Assert.Equal("big\nhello\n", Encoding.UTF8.GetString(stdout));
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", server, "-a", "/", "-m", "1048576", "branch/master/ro/big"]);
        Assert.True(code == 0, stderr);
        Assert.Equal(big, stdout);
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", server, "-a", "/", "branch/master/head", $"snapshots/{head}/msg"]);
        Assert.True(code == 0, stderr);
        Assert.Equal($"{head}\nc\n", Encoding.UTF8.GetString(stdout));
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodls", ["-s", server, "-a", "/", "-l", "branch/master"]);
        Assert.True(code == 0, stderr);
        Assert.Contains("head.live", Encoding.UTF8.GetString(stdout), StringComparison.Ordinal);
    }

    [Fact]
    public async Task SigkillDuringCommitsLeavesAnFsckCleanRepositoryWithEveryAcknowledgedCommit()
    {
        string git = GitDir + "-crash";
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, UseShellExecute = false };
        psi.Environment[ChildServer.Variable] = git;
        using Process child = Process.Start(psi)!;
        try
        {
            string line = (await child.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)))!;
            Assert.StartsWith("port ", line, StringComparison.Ordinal);
            ListenAddress.TryParse($"tcp://127.0.0.1:{line[5..]}", out ListenAddress? address, out _);
            var acknowledged = new List<string>();
            using var stop = new CancellationTokenSource();
            Task writer = Task.Run(async () =>
            {
                await using NinePClient c = await NinePClient.ConnectAsync(address!);
                await c.MkdirAsync("branch", "master");
                for (int i = 0; !stop.IsCancellationRequested; i++)
                {
                    try
                    {
                        await c.MkdirAsync("branch/master/transactions", $"t{i}");
                        string tx = $"branch/master/transactions/t{i}";
                        await c.CreateFileAsync($"{tx}/rw", $"f{i % 50}", Encoding.UTF8.GetBytes($"value {i}"));
                        await c.WriteTextAsync($"{tx}/msg", $"commit {i}");
                        await c.WriteTextAsync($"{tx}/ctl", "commit");
                        lock (acknowledged)
                        {
                            acknowledged.Add($"commit {i}");
                        }
                    }
                    catch (Exception e) when (e is IOException or NinePException or ObjectDisposedException)
                    {
                        return; // the server died under us
                    }
                }
            });
            var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
            while (true)
            {
                Assert.True(DateTime.UtcNow < deadline, "the writer made no progress");
                await Task.Delay(100);
                lock (acknowledged)
                {
                    if (acknowledged.Count >= 40)
                    {
                        break;
                    }
                }
                Assert.False(writer.IsCompleted, "writer stopped early");
            }
            child.Kill(); // SIGKILL mid-stream
            await child.WaitForExitAsync();
            stop.Cancel();
            await writer.WaitAsync(TimeSpan.FromSeconds(30));

            var (code, _, stderr) = await ProcessRunner.RunBinaryAsync("git", ["-C", git, "fsck", "--strict", "--no-dangling"]);
            Assert.True(code == 0, stderr);
            // Restart onto the same repository: every acknowledged commit is in the history.
            await using var restarted = new DataKitServer(git);
            ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
            var ep = (System.Net.IPEndPoint)restarted.Listen(any!);
            await using NinePClient r = await NinePClient.ConnectAsync(new ListenAddress(ep, "x"));
            string head = (await r.ReadTextAsync("branch/master/head")).Trim();
            var (_, log, _) = await ProcessRunner.RunBinaryAsync("git", ["-C", git, "log", "--format=%s", head]);
            string[] messages = Encoding.UTF8.GetString(log).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            lock (acknowledged)
            {
                Assert.All(acknowledged, m => Assert.Contains(m, messages));
                Assert.True(acknowledged.Count >= 40);
            }
        }
        finally
        {
            if (!child.HasExited)
            {
                child.Kill();
            }
            try
            {
                Directory.Delete(git, true);
            }
            catch (IOException)
            {
            }
        }
    }

    [Fact]
    public async Task TheLinuxDialectDrivesATransaction()
    {
        await using NinePClient l = await Connect(Dialect.Linux);
        uint branches = await l.WalkAsync("branch");
        await l.RpcAsync(new Fcall { Type = MessageType.Tmkdir, DFid = branches, Name = "linux", LMode = 0x1ED });
        uint txs = await l.WalkAsync("branch/linux/transactions");
        await l.RpcAsync(new Fcall { Type = MessageType.Tmkdir, DFid = txs, Name = "t", LMode = 0x1ED });
        uint rw = await l.WalkAsync("branch/linux/transactions/t/rw");
        await l.RpcAsync(new Fcall { Type = MessageType.Tmkdir, DFid = rw, Name = "d", LMode = 0x1ED });
        await l.RpcAsync(new Fcall { Type = MessageType.Tsymlink, Fid = rw, Name = "ln", Name2 = "d/f" });
        uint d = await l.WalkAsync("branch/linux/transactions/t/rw/d");
        await l.RpcAsync(new Fcall { Type = MessageType.Tlcreate, Fid = d, Name = "f", Flags = P9.LOWronly | P9.LOCreat, LMode = 0x1ED });
        await l.WriteAsync(d, 0, "from .L\n"u8.ToArray());
        await l.ClunkAsync(d);
        Fcall attr = await l.RpcAsync(new Fcall { Type = MessageType.Tgetattr, Fid = await l.WalkAsync("branch/linux/transactions/t/rw/d/f"), RequestMask = P9.GetattrBasic });
        Assert.Equal(P9.SIfReg | 0x1FDu, attr.Attr!.Mode);
        Assert.Equal(8ul, attr.Attr.Size);
        Fcall link = await l.RpcAsync(new Fcall { Type = MessageType.Treadlink, Fid = await l.WalkAsync("branch/linux/transactions/t/rw/ln") });
        Assert.Equal("d/f", link.Name2);
        // echo commit > ctl: open with O_TRUNC, write.
        uint ctl = await l.WalkAsync("branch/linux/transactions/t/ctl");
        await l.RpcAsync(new Fcall { Type = MessageType.Tlopen, Fid = ctl, Flags = P9.LOWronly | P9.LOTrunc });
        await l.WriteAsync(ctl, 0, "commit\n"u8.ToArray());
        await l.ClunkAsync(ctl);
        Assert.Equal(["d", "ln"], await l.ListAsync("branch/linux/ro"));
        Assert.Equal("from .L\n", await l.ReadTextAsync("branch/linux/ro/d/f"));
        Assert.Contains("100755 blob", Git("ls-tree", "-r", "linux"), StringComparison.Ordinal);
        Assert.Contains("120000 blob", Git("ls-tree", "-r", "linux"), StringComparison.Ordinal);
        Fcall err = await Assert.ThrowsAsync<NinePException>(() => l.WalkAsync("branch/nope")).ContinueWith(t => new Fcall { Errno = t.Result.Errno });
        Assert.Equal(Errno.ENOENT, err.Errno);
    }
}
