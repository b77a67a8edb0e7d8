using System.Text;
using Kit.NineP.Client;
using Kit.NineP.Protocol;

namespace Kit.DataKit.Tests;

/// <summary>The original's raw-9P server suite (reference/datakit.md §7.3), over 9P2000.u against the real server.</summary>
public sealed class ServerSuiteTests : DataKitTestBase
{
    [Fact]
    public async Task Transaction()
    {
        Assert.Equal(["branch", "debug", "snapshots", "trees", "commits", "remotes"], await C.ListAsync(""));
        await C.MkdirAsync("branch", "master");
        uint fid = await C.WalkAsync(C.RootFid, ["branch", "master", "..", ".."]);
        Assert.Equal("", (await C.StatAsync(fid)).Name);
        await C.ClunkAsync(fid);
        await C.MkdirAsync("branch/master/transactions", "foo");
        string tx = "branch/master/transactions/foo";
        await C.MkdirAsync($"{tx}/rw", "src");
        await Create(C, $"{tx}/rw/src", "Makefile", "all: build\n\tls\n");
        await Echo(C, $"{tx}/msg", "My commit");
        Assert.Equal("", await Read(C, $"{tx}/parents"));
        await Echo(C, $"{tx}/ctl", "commit");
        Assert.Equal(15ul, (await C.StatPathAsync("branch/master/ro/src/Makefile")).Length);
        Assert.Empty(await C.ListAsync("branch/master/transactions"));
        string head = (await Read(C, "branch/master/head")).Trim();
        Assert.Equal(40, head.Length);
        Assert.Equal("My commit", Git("log", "-1", "--format=%B", "master").TrimEnd('\n'));
        Assert.Equal("My commit\n", await Read(C, $"snapshots/{head}/msg"));
        Assert.Equal(head, await Read(C, $"snapshots/{head}/hash"));
    }

    [Fact]
    public async Task Qids()
    {
        await C.MkdirAsync("branch", "master");
        Fcall r = await C.RpcAsync(new Fcall { Type = MessageType.Twalk, Fid = C.RootFid, NewFid = 77, Wnames = ["branch", "master", "head"] });
        Assert.Equal([true, true, false], r.Wqids.Select(q => q.IsDirectory).ToArray());
    }

    [Fact]
    public async Task Watch()
    {
        await C.MkdirAsync("branch", "master");
        // A branch made by mkdir is visible only to its connection until its first commit (§1.2), so watch on C.
        NinePClient w = C;
        var root = await OpenStream(w, "branch/master/watch/tree.live");
        Assert.Equal("D-4b825dc642cb6eb9a060e54bf8d69288fbee4904\n", await root.Next());
        var doc = await OpenStream(w, "branch/master/watch/doc.node/tree.live");
        Assert.Equal("\n", await doc.Next());
        var makefile = await OpenStream(w, "branch/master/watch/src.node/Makefile.node/tree.live");
        Assert.Equal("\n", await makefile.Next());
        Task<string> makefileNext = makefile.Next();

        string tx = await Begin(C, "master");
        await C.MkdirAsync($"{tx}/rw", "src");
        await Create(C, $"{tx}/rw/src", "Makefile", "all: build");
        await Commit(C, tx, "one");
        Assert.Equal("F-d81e367f87ee314bcd3e449b1c6641efda5bc269\n", await makefileNext.WaitAsync(TimeSpan.FromSeconds(30)));
        string rootLine = await root.Next().WaitAsync(TimeSpan.FromSeconds(30));
        Assert.StartsWith("D-", rootLine, StringComparison.Ordinal);

        Task<string> makefileAgain = makefile.Next();
        Task<string> docNext = doc.Next();
        tx = await Begin(C, "master", "t2");
        await C.MkdirAsync($"{tx}/rw", "doc");
        await Create(C, $"{tx}/rw/doc", "README", "Hello");
        await Commit(C, tx, "two");
        string docLine = (await docNext.WaitAsync(TimeSpan.FromSeconds(30))).Trim();
        Assert.Equal("D-" + Git("rev-parse", "master:doc").Trim(), docLine);
        Assert.Equal(["README"], await C.ListAsync($"trees/{docLine}"));
        Assert.Equal("D-" + Git("rev-parse", "master^{tree}").Trim() + "\n", await root.Next().WaitAsync(TimeSpan.FromSeconds(30)));
        // The Makefile did not change, so its watcher stays asleep.
        await Task.Delay(300);
        Assert.False(makefileAgain.IsCompleted);
        Assert.Contains("src.node", await w.ListAsync("branch/master/watch"));
    }

    /// <summary>Reads a stream file the way Linux does: a chunk, then the empty "flush" read, then the blocking read.</summary>
    internal sealed class StreamReader(NinePClient c, uint fid)
    {
        private ulong _offset;

        public async Task<string> Next()
        {
            byte[] chunk = await c.ReadAsync(fid, _offset, 4096);
            _offset += (ulong)chunk.Length;
            byte[] flush = await c.ReadAsync(fid, _offset, 4096);
            Assert.Empty(flush);
            return Encoding.UTF8.GetString(chunk);
        }
    }

    internal static async Task<StreamReader> OpenStream(NinePClient c, string path)
    {
        uint fid = await c.WalkAsync(path);
        await c.OpenAsync(fid, P9.OREAD);
        return new StreamReader(c, fid);
    }

    [Fact]
    public async Task Range()
    {
        string tx = await Begin(C, "master");
        uint fid = await C.WalkAsync($"{tx}/origin");
        await C.OpenAsync(fid, P9.OREAD);
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => C.ReadAsync(fid, 100, 10));
        Assert.Equal("Offset 100 beyond end-of-file (len = 0)", e.Message);
    }

    [Fact]
    public async Task RenameBranch()
    {
        string tx = await Begin(C, "old");
        await Create(C, $"{tx}/rw", "f", "x");
        await Commit(C, tx, "c");
        await C.WstatPathAsync("branch/old", Stat.DontTouch with { Name = "new" });
        Assert.Equal(["new"], await C.ListAsync("branch"));
        Assert.Equal("new", (await C.StatPathAsync("branch/new")).Name);
        Assert.Contains("new", Git("branch", "--list"), StringComparison.Ordinal);
        Assert.DoesNotContain("old", Git("branch", "--list"), StringComparison.Ordinal);
        await C.RemovePathAsync("branch/new");
        Assert.Equal("", Git("branch", "--list").Trim());
    }

    [Fact]
    public async Task RenameFile()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "old", "data");
        await C.WstatPathAsync($"{tx}/rw/old", Stat.DontTouch with { Name = "new" });
        Assert.Equal(["new"], await C.ListAsync($"{tx}/rw"));
        await C.MkdirAsync($"{tx}/rw", "dir");
        await Create(C, $"{tx}/rw/dir", "inner", "i");
        Assert.Equal("Is a directory", await ErrorOf(() => C.WstatPathAsync($"{tx}/rw/new", Stat.DontTouch with { Name = "dir" })));
        uint fid = await C.WalkAsync($"{tx}/rw/new");
        await C.RemovePathAsync($"{tx}/rw/new");
        Assert.Equal("No such file or directory", await ErrorOf(() => C.WstatAsync(fid, Stat.DontTouch with { Name = "other" })));
        await Commit(C, tx, "c");
        Assert.Equal(["dir"], await C.ListAsync("branch/master/ro"));
    }

    [Fact]
    public async Task Truncate()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "f", "Hello");
        string f = $"{tx}/rw/f";
        await C.WstatPathAsync(f, Stat.DontTouch with { Length = 4 });
        Assert.Equal("Hell", await Read(C, f));
        await C.WstatPathAsync(f, Stat.DontTouch with { Length = 4 });
        Assert.Equal("Hell", await Read(C, f));
        await C.WstatPathAsync(f, Stat.DontTouch with { Length = 6 });
        Assert.Equal("Hell\0\0", await Read(C, f));
        await C.WstatPathAsync(f, Stat.DontTouch with { Length = 0 });
        Assert.Equal("", await Read(C, f));
    }

    [Fact]
    public async Task Parents()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "a", "1");
        string c1 = await Commit(C, tx, "first");
        Assert.Equal("", await Read(C, $"snapshots/{c1}/parents"));
        tx = await Begin(C, "master", "t2");
        Assert.Equal(c1 + "\n", await Read(C, $"{tx}/parents"));
        await Create(C, $"{tx}/rw", "b", "2");
        string c2 = await Commit(C, tx, "second");
        Assert.Equal(c1 + "\n", await Read(C, $"snapshots/{c2}/parents"));

        tx = await Begin(C, "dev");
        await Create(C, $"{tx}/rw", "d", "dev");
        string c3 = await Commit(C, tx, "dev");

        // Invalid and unknown parents fail at commit time; the transaction stays open.
        string bad = await Begin(C, "master", "bad");
        await Echo(C, $"{bad}/parents", "hello");
        Assert.StartsWith("invalid-hash \"hello\"", await ErrorOf(() => Echo(C, $"{bad}/ctl", "commit")), StringComparison.Ordinal);
        await Echo(C, $"{bad}/parents", new string('1', 40));
        Assert.Equal("No such file or directory", await ErrorOf(() => Echo(C, $"{bad}/ctl", "commit")));
        await Echo(C, $"{bad}/ctl", "close");

        // Nested transactions: the outer adds dev's head to its parents and commits after the inner one.
        string outer = await Begin(C, "master", "outer");
        string inner = await Begin(C, "master", "inner");
        await Create(C, $"{inner}/rw", "inner", "i");
        string innerHead = await Commit(C, inner, "From inner");
        await Echo(C, $"{outer}/parents", c2 + "\n" + c3 + "\n");
        await Create(C, $"{outer}/rw", "outer", "o");
        string merged = await Commit(C, outer, "From outer");
        string[] mergeParents = (await Read(C, $"snapshots/{merged}/parents")).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, mergeParents.Length);
        Assert.Equal(innerHead, mergeParents[0]);
        Assert.Equal([c2, c3], (await Read(C, $"snapshots/{mergeParents[1]}/parents")).Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(["a", "b", "inner", "outer"], await C.ListAsync("branch/master/ro"));
    }

    [Fact]
    public async Task Merge()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "file", "from-master");
        string master = await Commit(C, tx, "m");
        await C.MkdirAsync("branch", "pr");
        await Echo(C, "branch/pr/fast-forward", master);
        Assert.Equal("No such file or directory", await ErrorOf(() => Echo(C, "branch/pr/fast-forward", new string('a', 40))));
        tx = await Begin(C, "pr");
        await Create(C, $"{tx}/rw", "file", "from-pr");
        string pr = await Commit(C, tx, "p");

        tx = await Begin(C, "master", "merge");
        await Echo(C, $"{tx}/merge", pr);
        Assert.Equal("ok", await Read(C, $"{tx}/merge"));
        Assert.Equal("from-master", await Read(C, $"{tx}/ours/file"));
        Assert.Equal("from-pr", await Read(C, $"{tx}/theirs/file"));
        Assert.Equal("from-master", await Read(C, $"{tx}/base/file"));
        Assert.Equal("", await Read(C, $"{tx}/conflicts"));
        string head = await Commit(C, tx, "merged");
        Assert.Equal(new[] { master, pr }.Order(), (await Read(C, $"snapshots/{head}/parents")).Split('\n', StringSplitOptions.RemoveEmptyEntries).Order());
        Assert.Equal("from-pr", await Read(C, "branch/master/ro/file"));
    }

    [Fact]
    public async Task MergeMetadata()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "a", "a");
        await Create(C, $"{tx}/rw", "b", "b");
        string master = await Commit(C, tx, "m");
        await C.MkdirAsync("branch", "pr");
        await Echo(C, "branch/pr/fast-forward", master);
        tx = await Begin(C, "pr");
        await C.WstatPathAsync($"{tx}/rw/b", Stat.DontTouch with { Mode = 0x1ED });
        string pr = await Commit(C, tx, "p");
        tx = await Begin(C, "master", "merge");
        await Echo(C, $"{tx}/merge", pr);
        Assert.Equal("", await Read(C, $"{tx}/conflicts"));
        Assert.NotEqual(0u, (await C.StatPathAsync($"{tx}/rw/b")).Mode & 0x40);
        await Commit(C, tx, "merged");
        Assert.Contains("100755 blob", Git("ls-tree", "master", "b"), StringComparison.Ordinal);
    }

    [Fact]
    public async Task MergeEmpty()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "file", "x");
        string master = await Commit(C, tx, "m");
        tx = await Begin(C, "new");
        await Echo(C, $"{tx}/merge", master);
        Assert.Equal(["file"], await C.ListAsync($"{tx}/rw"));
    }

    [Fact]
    public async Task Conflicts()
    {
        string tx = await Begin(C, "master");
        foreach (string n in new[] { "a", "b", "c", "d", "e", "f" })
        {
            await Create(C, $"{tx}/rw", n, $"{n}-from-base");
        }
        await C.MkdirAsync($"{tx}/rw", "dir");
        await Create(C, $"{tx}/rw/dir", "a", "dir/a");
        await C.MkdirAsync($"{tx}/rw", "dir2");
        await Create(C, $"{tx}/rw/dir2", "b", "dir2/b");
        string baseCommit = await Commit(C, tx, "base");
        await C.MkdirAsync("branch", "theirs");
        await Echo(C, "branch/theirs/fast-forward", baseCommit);

        tx = await Begin(C, "master", "ours");
        await Create(C, $"{tx}/rw", "a", "a-ours");
        await Create(C, $"{tx}/rw", "c", "c-ours");
        await C.RemovePathAsync($"{tx}/rw/d");
        await C.RemovePathAsync($"{tx}/rw/f");
        await Create(C, $"{tx}/rw", "g", "g-same");
        await Create(C, $"{tx}/rw", "h", "h-ours");
        await C.RemovePathAsync($"{tx}/rw/dir");
        await Create(C, $"{tx}/rw", "dir", "now a file");
        await Create(C, $"{tx}/rw/dir2", "b", "dir2/b edited");
        await Commit(C, tx, "ours");

        tx = await Begin(C, "theirs");
        await Create(C, $"{tx}/rw", "a", "a-theirs");
        await Create(C, $"{tx}/rw", "b", "b-theirs");
        await C.RemovePathAsync($"{tx}/rw/e");
        await Create(C, $"{tx}/rw", "f", "f-theirs");
        await Create(C, $"{tx}/rw", "g", "g-same");
        await Create(C, $"{tx}/rw", "h", "h-theirs");
        await Create(C, $"{tx}/rw/dir", "a", "dir/a edited");
        await C.RemovePathAsync($"{tx}/rw/dir2");
        await Create(C, $"{tx}/rw", "dir2", "now a file");
        string theirs = await Commit(C, tx, "theirs");

        tx = await Begin(C, "master", "merge");
        await Echo(C, $"{tx}/merge", theirs);
        Assert.Equal("a\ndir\ndir2\nf\nh\n", await Read(C, $"{tx}/conflicts"));
        Assert.Equal("** Conflict **\nChanged on both branches\n", await Read(C, $"{tx}/rw/a"));
        Assert.Equal("b-theirs", await Read(C, $"{tx}/rw/b"));
        Assert.Equal("c-ours", await Read(C, $"{tx}/rw/c"));
        Assert.Equal("** Conflict **\noption: add/del\n", await Read(C, $"{tx}/rw/f"));
        Assert.Equal("g-same", await Read(C, $"{tx}/rw/g"));
        Assert.Equal("** Conflict **\ndefault: add/add and no common ancestor\n", await Read(C, $"{tx}/rw/h"));
        Assert.Equal("** Conflict **\nFile vs dir\n", await Read(C, $"{tx}/rw/dir"));
        Assert.Equal("** Conflict **\nFile vs dir\n", await Read(C, $"{tx}/rw/dir2"));
        Assert.Equal(["a", "b", "c", "dir", "dir2", "f", "g", "h"], await C.ListAsync($"{tx}/rw"));
        Assert.Equal("conflicts file is not empty", await ErrorOf(() => Echo(C, $"{tx}/ctl", "commit")));

        foreach (string p in new[] { "a", "dir", "dir2" })
        {
            await C.RemovePathAsync($"{tx}/rw/{p}");
        }
        await Echo(C, $"{tx}/rw/f", await Read(C, $"{tx}/theirs/f"));
        Assert.Equal("h\n", await Read(C, $"{tx}/conflicts"));
        await C.RemovePathAsync($"{tx}/rw/h");
        await Commit(C, tx, "resolved");
        Assert.Equal(["b", "c", "f", "g"], await C.ListAsync("branch/master/ro"));
        Assert.Equal("f-theirs", await Read(C, "branch/master/ro/f"));
    }

    [Fact]
    public async Task RemovingADirectoryResolvesTheConflictsBeneathIt()
    {
        string tx = await Begin(C, "master");
        await C.MkdirAsync($"{tx}/rw", "dir");
        await Create(C, $"{tx}/rw/dir", "x", "base");
        string baseCommit = await Commit(C, tx, "base");
        await C.MkdirAsync("branch", "other");
        await Echo(C, "branch/other/fast-forward", baseCommit);
        tx = await Begin(C, "other");
        await Echo(C, $"{tx}/rw/dir/x", "theirs");
        string theirs = await Commit(C, tx, "theirs");
        tx = await Begin(C, "master", "ours");
        await Echo(C, $"{tx}/rw/dir/x", "ours");
        await Commit(C, tx, "ours");
        tx = await Begin(C, "master", "merge");
        await Echo(C, $"{tx}/merge", theirs);
        Assert.Equal("dir/x\n", await Read(C, $"{tx}/conflicts"));
        await C.RemovePathAsync($"{tx}/rw/dir");
        Assert.Equal("", await Read(C, $"{tx}/conflicts"));
        await Commit(C, tx, "resolved by removal");
        Assert.Empty(await C.ListAsync("branch/master/ro"));
    }

    [Fact]
    public async Task Debug()
    {
        Assert.Equal(["datakit"], await C.ListAsync("debug/src"));
        Assert.Equal("DataKit server, store and 9P connections\n", await Read(C, "debug/src/datakit/doc"));
        string level = "debug/src/datakit/level";
        Assert.Equal("warning\n", await Read(C, level));
        await Echo(C, level, "debug\n");
        Assert.Equal("debug\n", await Read(C, level));
        await Echo(C, level, "info");
        Assert.Equal("info\n", await Read(C, level));
        await Echo(C, level, "quiet");
        Assert.Equal("quiet\n", await Read(C, level));
        Assert.StartsWith("invalid log level", await ErrorOf(() => Echo(C, level, "loud")), StringComparison.Ordinal);
        Assert.True(Server.LogSources.IsEnabled("datakit", Microsoft.Extensions.Logging.LogLevel.Critical) == false);
    }

    [Fact]
    public async Task StableInodes()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "f", "x");
        Stat a = await C.StatPathAsync($"{tx}/rw/f");
        Stat b = await C.StatPathAsync($"{tx}/rw/f");
        Assert.Equal(a.Qid.Path, b.Qid.Path);
    }

    [Fact]
    public async Task ErrorTextsOfTheOriginal()
    {
        await C.MkdirAsync("branch", "master");
        Assert.Equal("Can only contain directories", await ErrorOf(() => Create(C, "branch", "file", "")));
        await C.MkdirAsync("branch/master/transactions", "t");
        Assert.Equal("Already exists", await ErrorOf(() => C.MkdirAsync("branch/master/transactions", "t")));
        Assert.Equal("Unknown command \"bogus\"", await ErrorOf(() => Echo(C, "branch/master/transactions/t/ctl", "bogus")));
        Assert.Equal("Directory is read-only", await ErrorOf(() => Create(C, "branch/master/ro", "x", "")));
        Assert.StartsWith("invalid-hash", await ErrorOf(() => Echo(C, "branch/master/fast-forward", "xyz")), StringComparison.Ordinal);
        Assert.StartsWith("invalid-hash", await ErrorOf(() => C.ListAsync("snapshots/nothex")), StringComparison.Ordinal);
        Assert.Equal("No such file or directory", await ErrorOf(() => C.ListAsync("snapshots/" + new string('0', 40))));
        Assert.Equal("Read-only file", await ErrorOf(() => Echo(C, "branch/master/head", "x")));
        Assert.Empty(await C.ListAsync("snapshots"));
    }

    [Fact]
    public async Task ReflogAndHeadLiveStreams()
    {
        await C.MkdirAsync("branch", "master");
        NinePClient w = C;
        var live = await OpenStream(w, "branch/master/head.live");
        var reflog = await OpenStream(w, "branch/master/reflog");
        Assert.Equal("\n", await live.Next());
        Assert.Equal("\n", await reflog.Next());
        Task<string> liveNext = live.Next();
        Task<string> reflogNext = reflog.Next();
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "x", "y");
        string head = await Commit(C, tx, "c");
        Assert.Equal(head + "\n", await liveNext.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal(head + "\n", await reflogNext.WaitAsync(TimeSpan.FromSeconds(30)));
        // Seeking in a stream is an error.
        uint fid = await w.WalkAsync("branch/master/head.live");
        await w.OpenAsync(fid, P9.OREAD);
        Assert.Equal("Attempt to seek in stream", await ErrorOf(() => w.ReadAsync(fid, 5, 10)));
        liveNext = live.Next();
        await C.RemovePathAsync("branch/master");
        Assert.Equal("\n", await liveNext.WaitAsync(TimeSpan.FromSeconds(30)));
    }

    [Fact]
    public async Task FlushCancelsABlockedHeadLiveReadAndTheConnectionGoesOn()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "x", "y");
        string head = await Commit(C, tx, "c");
        uint fid = await C.WalkAsync("branch/master/head.live");
        await C.OpenAsync(fid, P9.OREAD);
        Assert.Equal(head + "\n", Encoding.UTF8.GetString(await C.ReadAsync(fid, 0, 100)));
        Assert.Empty(await C.ReadAsync(fid, 41, 100));
        using var cts = new CancellationTokenSource();
        Task<byte[]> blocked = C.ReadAsync(fid, 41, 100, cts.Token);
        Assert.Equal(head + "\n", await Read(C, "branch/master/head"));
        Assert.False(blocked.IsCompleted);
        cts.Cancel(); // Tflush, as Ctrl-C on `cat head.live` does
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => blocked);
        await C.ClunkAsync(fid);
        Assert.Equal(["master"], await C.ListAsync("branch"));
    }

    [Fact]
    public async Task DiffBetweenCommitsAndTransactions()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "file", "1");
        string h1 = await Commit(C, tx, "one");
        tx = await Begin(C, "master", "t2");
        await Create(C, $"{tx}/rw", "file", "2");
        await Create(C, $"{tx}/rw", "foo", "new");
        Assert.Equal("* file\n+ foo\n", await Read(C, $"{tx}/diff/{h1}"));
        string h2 = await Commit(C, tx, "two");
        Assert.Equal("* file\n+ foo\n", await Read(C, $"snapshots/{h2}/diff/{h1}"));
        Assert.Equal("", await Read(C, $"snapshots/{h2}/diff/{h2}"));
        Assert.Equal("* file\n- foo\n", await Read(C, $"snapshots/{h1}/diff/{h2}"));
        Assert.Equal("* file\n+ foo\n", await Read(C, $"branch/master/diff/{h1}"));
        Assert.Empty(await C.ListAsync("branch/master/diff"));
    }

    [Fact]
    public async Task ExecAndSymlinksArePreserved()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "run.sh", "#!/bin/sh\n", exec: true);
        await C.CreateFileAsync($"{tx}/rw", "link", default, P9.DmSymlink | 0x1FF, "run.sh");
        await Commit(C, tx, "c");
        Assert.Contains("100755 blob", Git("ls-tree", "master", "run.sh"), StringComparison.Ordinal);
        Assert.Contains("120000 blob", Git("ls-tree", "master", "link"), StringComparison.Ordinal);
        Stat s = await C.StatPathAsync("branch/master/ro/link");
        Assert.Equal("run.sh", s.Extension);
        Assert.NotEqual(0u, s.Mode & P9.DmSymlink);
        Assert.Equal(0x1FDu, (await C.StatPathAsync("branch/master/ro/run.sh")).Mode);
    }
}
