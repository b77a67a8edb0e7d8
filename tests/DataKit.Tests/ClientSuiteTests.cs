using System.Text;
using Kit.DataKit.Client;

namespace Kit.DataKit.Tests;

/// <summary>The original's shared client suite (reference/datakit.md §7.2), through the C# client over 9P.</summary>
public sealed class ClientSuiteTests : DataKitTestBase
{
    private DataKitClient _dk = null!;

    public override async ValueTask InitializeAsync()
    {
        await base.InitializeAsync();
        _dk = await DataKitClient.ConnectAsync(Address);
    }

    public override async ValueTask DisposeAsync()
    {
        await _dk.DisposeAsync();
        await base.DisposeAsync();
    }

    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public async Task Transaction()
    {
        Branch master = await _dk.BranchAsync("master");
        Assert.Null(await master.HeadAsync());
        await using Transaction t = await master.TransactionAsync();
        Assert.Empty(await t.ParentsAsync());
        await t.CreateDirAsync("src");
        await t.CreateFileAsync("src/Makefile", B("all: build\n\tls\n"));
        await t.CommitAsync("My commit");
        Commit head = (await master.HeadAsync())!;
        Assert.Equal(new DkStat(ValueKind.File, 15), await head.Tree.StatAsync("src/Makefile"));
        Assert.Equal("My commit\n", await head.MessageAsync());
        Assert.Equal(["master"], await _dk.ListBranchesAsync());
    }

    [Fact]
    public async Task Watch()
    {
        Branch master = await _dk.BranchAsync("master");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await using IAsyncEnumerator<TreeNodeRef?> root = master.WatchPathAsync("", cts.Token).GetAsyncEnumerator(cts.Token);
        await using IAsyncEnumerator<TreeNodeRef?> doc = master.WatchPathAsync("doc", cts.Token).GetAsyncEnumerator(cts.Token);
        await using IAsyncEnumerator<TreeNodeRef?> makefile = master.WatchPathAsync("src/Makefile", cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.True(await root.MoveNextAsync());
        Assert.Equal(ValueKind.Dir, root.Current!.Kind);
        Assert.Empty(await _dk.Tree(root.Current.Id).ReadDirAsync(""));
        Assert.True(await doc.MoveNextAsync());
        Assert.Null(doc.Current);
        Assert.True(await makefile.MoveNextAsync());
        Assert.Null(makefile.Current);

        async Task Edit(Func<Transaction, Task> f)
        {
            await using Transaction t = await master.TransactionAsync();
            await f(t);
            await t.CommitAsync("edit");
        }

        await Edit(async t =>
        {
            await t.MakeDirsAsync("src");
            await t.CreateFileAsync("src/Makefile", B("all: build"));
        });
        Assert.True(await makefile.MoveNextAsync());
        Assert.Equal("all: build", await _dk.Tree(makefile.Current!.Id).ReadTextAsync(""));
        Assert.True(await root.MoveNextAsync());
        Assert.Equal(["src"], await _dk.Tree(root.Current!.Id).ReadDirAsync(""));

        ValueTask<bool> makefileNext = makefile.MoveNextAsync();
        await Edit(async t =>
        {
            await t.MakeDirsAsync("doc");
            await t.CreateFileAsync("doc/README", B("Hello"));
        });
        Assert.True(await doc.MoveNextAsync());
        Assert.Equal(["README"], await _dk.Tree(doc.Current!.Id).ReadDirAsync(""));
        Assert.True(await root.MoveNextAsync());
        Assert.Equal(["doc", "src"], await _dk.Tree(root.Current!.Id).ReadDirAsync(""));
        Assert.False(makefileNext.IsCompleted);

        await Edit(t => t.SetExecutableAsync("src/Makefile", true));
        Assert.True(await makefileNext);
        Assert.Equal(ValueKind.Exec, makefile.Current!.Kind);
        await Edit(async t =>
        {
            await t.RemoveAsync("src/Makefile");
            await t.CreateSymlinkAsync("src/Makefile", "my-target");
        });
        Assert.True(await makefile.MoveNextAsync());
        Assert.Equal(ValueKind.Link, makefile.Current!.Kind);
        Assert.Equal("my-target", await _dk.Tree(makefile.Current.Id).ReadTextAsync(""));
        await Edit(t => t.RemoveAsync("src/Makefile"));
        Assert.True(await makefile.MoveNextAsync());
        Assert.Null(makefile.Current);
    }

    [Fact]
    public async Task MakeDirs()
    {
        Branch b = await _dk.BranchAsync("master");
        await using Transaction t = await b.TransactionAsync();
        await t.MakeDirsAsync("");
        await t.MakeDirsAsync("foo/bar/baz");
        await t.MakeDirsAsync("foo/new");
        await t.MakeDirsAsync("foo/bar");
        Assert.Equal(ValueKind.Dir, (await t.StatAsync("foo/bar/baz"))!.Kind);
        Assert.Equal(ValueKind.Dir, (await t.StatAsync("foo/new"))!.Kind);
    }

    [Fact]
    public async Task Truncate()
    {
        Branch b = await _dk.BranchAsync("master");
        await using Transaction t = await b.TransactionAsync();
        await t.CreateFileAsync("f", B("Hello"));
        await t.TruncateAsync("f", 4);
        Assert.Equal("Hell", await t.ReadTextAsync("f"));
        await t.TruncateAsync("f", 4);
        Assert.Equal("Hell", await t.ReadTextAsync("f"));
        await t.TruncateAsync("f", 6);
        Assert.Equal("Hell\0\0", await t.ReadTextAsync("f"));
        await t.TruncateAsync("f", 0);
        Assert.Equal("", await t.ReadTextAsync("f"));
    }

    [Fact]
    public async Task ParentsAndCommitLookup()
    {
        Branch b = await _dk.BranchAsync("master");
        await using (Transaction t = await b.TransactionAsync())
        {
            await t.CreateFileAsync("a", B("1"));
            await t.CommitAsync("first");
        }
        Commit first = (await b.HeadAsync())!;
        Assert.Empty(await first.ParentsAsync());
        await using (Transaction t = await b.TransactionAsync())
        {
            await t.CreateFileAsync("b", B("2"));
            await t.CommitAsync("second");
        }
        Commit second = (await b.HeadAsync())!;
        Assert.Equal([first.Id], await second.ParentsAsync());
        Assert.Equal(second.Id, (await _dk.CommitAsync(second.Id)).Id);
        DataKitException e = await Assert.ThrowsAsync<DataKitException>(() => _dk.CommitAsync(new string('1', 40)));
        Assert.Equal(DataKitErrorKind.NotFound, e.Kind);
        await using Transaction bad = await b.TransactionAsync();
        await bad.SetParentsAsync([new Commit(_dk, "hello")]);
        await Assert.ThrowsAsync<DataKitException>(() => bad.CommitAsync("bad"));
        Assert.False(bad.IsClosed);
    }

    [Fact]
    public async Task MergeAndDiff()
    {
        Branch master = await _dk.BranchAsync("master");
        await using (Transaction t = await master.TransactionAsync())
        {
            await t.CreateFileAsync("file", B("base"));
            await t.CommitAsync("base");
        }
        Commit baseCommit = (await master.HeadAsync())!;
        Branch pr = await _dk.BranchAsync("pr");
        await pr.FastForwardAsync(baseCommit);
        await using (Transaction t = await pr.TransactionAsync())
        {
            await t.ReplaceFileAsync("file", B("pr"));
            await t.CreateFileAsync("foo", B("new"));
            await t.CommitAsync("pr");
        }
        Commit prHead = (await pr.HeadAsync())!;
        Assert.Equal([new DiffEntry(DiffKind.Updated, "file"), new DiffEntry(DiffKind.Added, "foo")], await prHead.DiffAsync(baseCommit));
        Assert.Empty(await prHead.DiffAsync(prHead));

        await using Transaction m = await master.TransactionAsync();
        MergeResult r = await m.MergeAsync(prHead);
        Assert.Empty(r.Conflicts);
        Assert.Equal("base", await r.Ours.ReadTextAsync("file"));
        Assert.Equal("pr", await r.Theirs.ReadTextAsync("file"));
        Assert.Equal("base", await r.Base.ReadTextAsync("file"));
        Assert.Equal([new DiffEntry(DiffKind.Updated, "file"), new DiffEntry(DiffKind.Added, "foo")], await m.DiffAsync(baseCommit));
        await m.CommitAsync("merge");
        Commit merged = (await master.HeadAsync())!;
        Assert.Equal(new[] { baseCommit.Id, prHead.Id }.Order(), (await merged.ParentsAsync()).Order());
        Assert.Equal("pr", await merged.Tree.ReadTextAsync("file"));
    }

    [Fact]
    public async Task ConflictsThroughTheApi()
    {
        Branch master = await _dk.BranchAsync("master");
        await using (Transaction t = await master.TransactionAsync())
        {
            await t.CreateFileAsync("a", B("base"));
            await t.CommitAsync("base");
        }
        Branch other = await _dk.BranchAsync("other");
        await other.FastForwardAsync((await master.HeadAsync())!);
        await using (Transaction t = await other.TransactionAsync())
        {
            await t.ReplaceFileAsync("a", B("theirs"));
            await t.CommitAsync("theirs");
        }
        await using (Transaction t = await master.TransactionAsync())
        {
            await t.ReplaceFileAsync("a", B("ours"));
            await t.CommitAsync("ours");
        }
        await using Transaction m = await master.TransactionAsync();
        MergeResult r = await m.MergeAsync((await other.HeadAsync())!);
        Assert.Equal(["a"], r.Conflicts);
        DataKitException e = await Assert.ThrowsAsync<DataKitException>(() => m.CommitAsync("nope"));
        Assert.Equal(DataKitErrorKind.ConflictsPending, e.Kind);
        await m.ReplaceFileAsync("a", B("resolved"));
        Assert.Empty(await m.ConflictsAsync());
        await m.CommitAsync("resolved");
        Assert.Equal("resolved", await (await master.HeadAsync())!.Tree.ReadTextAsync("a"));
    }

    [Fact]
    public async Task ConcurrentCommitsToDifferentFilesMerge()
    {
        Branch master = await _dk.BranchAsync("master");
        await using (Transaction t = await master.TransactionAsync())
        {
            await t.CreateFileAsync("x", B("0"));
            await t.CommitAsync("base");
        }
        Transaction t1 = await master.TransactionAsync();
        Transaction t2 = await master.TransactionAsync();
        await t1.CreateFileAsync("one", B("1"));
        await t2.CreateFileAsync("two", B("2"));
        await t1.CommitAsync("one");
        await t2.CommitAsync("two");
        Assert.Equal(["one", "two", "x"], await (await master.HeadAsync())!.Tree.ReadDirAsync(""));

        Transaction t3 = await master.TransactionAsync();
        Transaction t4 = await master.TransactionAsync();
        await t3.ReplaceFileAsync("x", B("3"));
        await t4.ReplaceFileAsync("x", B("4"));
        await t3.CommitAsync("three");
        DataKitException e = await Assert.ThrowsAsync<DataKitException>(() => t4.CommitAsync("four"));
        Assert.Equal(DataKitErrorKind.Conflict, e.Kind);
        await t4.AbortAsync();
    }

    [Fact]
    public async Task LargeWrite()
    {
        Branch b = await _dk.BranchAsync("master");
        byte[] data = new byte[1024 * 1024];
        new Random(5).NextBytes(data);
        await using Transaction t = await b.TransactionAsync();
        await t.CreateFileAsync("big", data);
        Assert.Equal(data, await t.ReadFileAsync("big"));
        await t.CommitAsync("big");
        Assert.Equal(data, await (await b.HeadAsync())!.Tree.ReadFileAsync("big"));
    }

    [Fact]
    public async Task RemoveAndAbort()
    {
        Branch b = await _dk.BranchAsync("master");
        await using (Transaction t = await b.TransactionAsync())
        {
            await t.MakeDirsAsync("foo/sub");
            await t.CreateFileAsync("foo/file1", B("1"));
            await t.CreateFileAsync("foo/sub/file2", B("2"));
            await t.RemoveAsync("foo/sub");
            await t.CommitAsync("c");
        }
        Commit head = (await b.HeadAsync())!;
        Assert.Equal(["file1"], await head.Tree.ReadDirAsync("foo"));
        Branch empty = await _dk.BranchAsync("empty");
        await using (Transaction t = await empty.TransactionAsync())
        {
            await t.CreateFileAsync("x", B("x"));
            await t.AbortAsync();
        }
        Assert.Null(await empty.HeadAsync());
    }

    [Fact]
    public async Task CreateOrReplace()
    {
        Branch b = await _dk.BranchAsync("master");
        await using Transaction t = await b.TransactionAsync();
        Assert.False(await t.ExistsAsync("f"));
        await t.CreateOrReplaceFileAsync("f", B("Data1"));
        Assert.True(await t.ExistsFileAsync("f"));
        await t.CreateOrReplaceFileAsync("f", B("Data2"));
        Assert.Equal("Data2", await t.ReadTextAsync("f"));
    }

    [Fact]
    public async Task WatchHead()
    {
        Branch b = await _dk.BranchAsync("master");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await using IAsyncEnumerator<Commit?> heads = b.WatchHeadAsync(cts.Token).GetAsyncEnumerator(cts.Token);
        Assert.True(await heads.MoveNextAsync());
        Assert.Null(heads.Current);
        await using (Transaction t = await b.TransactionAsync())
        {
            await t.CreateFileAsync("f", B("1"));
            await t.CommitAsync("c");
        }
        Assert.True(await heads.MoveNextAsync());
        Assert.Equal((await b.HeadAsync())!.Id, heads.Current!.Id);
    }
}
