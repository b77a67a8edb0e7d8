using System.Text;
using Kit.DataKit.Fs;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using LibGit2Sharp;

namespace Kit.DataKit.Tests;

/// <summary>Store-level properties: commit cost, remotes, hostile walks.</summary>
public sealed class StoreTests : DataKitTestBase
{
    [Fact]
    public void CommitRewritesOnlyTheTreesOnTheChangedPath()
    {
        GitStore store = Server.Store;
        // A wide tree: 300 directories of 3 files, built as Git objects directly.
        var top = new List<GitEntry>();
        for (int d = 0; d < 300; d++)
        {
            var files = new List<GitEntry>();
            for (int f = 0; f < 3; f++)
            {
                files.Add(new GitEntry($"f{f}", EntryKind.File, store.WriteBlob(Encoding.UTF8.GetBytes($"{d}/{f}"))));
            }
            ObjectId sub = store.WriteTree(files);
            top.Add(new GitEntry($"d{d:D3}", EntryKind.Dir, store.WriteTree([new GitEntry("deep", EntryKind.Dir, sub)])));
        }
        ObjectId root = store.WriteTree(top);
        ObjectId commit = store.WriteCommit(root, [], "wide");
        Assert.True(store.TrySetHead("master", commit, null, "test"));

        var tx = new Transaction(store, "master", "t", "/t");
        long before = store.TreesWritten;
        lock (tx.Gate)
        {
            tx.File(["d123", "deep", "f2"], touch: true).Write(store, 0, "changed"u8);
        }
        ObjectId head = tx.Commit();
        // Root, d123 and d123/deep: three trees, whatever the width of the tree.
        Assert.Equal(3, store.TreesWritten - before);
        Assert.Equal("changed", Encoding.UTF8.GetString(store.ReadBlob(store.Resolve(store.GetCommit(head)!.Tree, ["d123", "deep", "f2"])!.Value.Id)));
        Assert.Equal(300, store.ReadTree(store.GetCommit(head)!.Tree).Count);
        Git("fsck", "--strict", "--no-dangling");
    }

    [Fact]
    public void ACommitLoopLeavesTheLongLivedCachesEmpty()
    {
        // The soak's commit loop (issue 12, docs/soak.md): each transaction replaces one of 64 files and commits. The
        // next transaction reads each new root tree and commit back, and nothing reads them again: they must stay in
        // the small recently-written tier and be let go young. In the long-lived tier (as before) every commit's tree
        // and commit lived for hundreds to thousands of commits and died in the GC's gen2, which background
        // collections sweep without compacting: the soak's RSS climbed for minutes at a time.
        GitStore store = Server.Store;
        for (int i = 0; i < 300; i++)
        {
            var tx = new Transaction(store, "loop", $"t{i}", $"/t{i}");
            string name = $"file-{i % 64}";
            lock (tx.Gate)
            {
                // As the soak's client does: create the file, or truncate and rewrite it (`echo x > file`).
                if (tx.Get([name]) is WorkFile)
                {
                    tx.File([name], touch: true).Truncate(store, 0);
                }
                else
                {
                    tx.Dir([], touch: true).Children[name] = new WorkFile(EntryKind.File, null);
                }
                tx.File([name], touch: true).Write(store, 0, Encoding.UTF8.GetBytes($"iteration {i}\n"));
            }
            tx.Commit();
        }
        (long treeEntries, int commits, long writtenTreeEntries, int writtenCommits, int blobs) = store.CacheSizes;
        Assert.InRange(treeEntries, 0, 1); // the empty tree the first transaction started from
        Assert.Equal(0, commits);
        Assert.InRange(writtenTreeEntries, 65, 1_024);
        Assert.InRange(writtenCommits, 1, 16);
        // Nor the blob cache: each truncate copied the old blob into the working tree, uncached (it was kept before).
        Assert.Equal(0, blobs);

        // What the written tier answers is what the repository holds: a second store decodes the same commit and tree.
        ObjectId head = store.GetHead("loop")!;
        CommitInfo ours = store.GetCommit(head)!;
        using GitStore other = GitStore.Open(GitDir);
        CommitInfo read = other.GetCommit(head)!;
        Assert.Equal((read.Id, read.Tree, read.Message, read.When), (ours.Id, ours.Tree, ours.Message, ours.When));
        Assert.Equal(read.Parents, ours.Parents);
        Assert.Equal(other.ReadTree(read.Tree), store.ReadTree(ours.Tree));
        Assert.Equal(64, store.ReadTree(ours.Tree).Count);
        Git("fsck", "--strict", "--no-dangling");
    }

    [Fact]
    [Trait("Tier", "Real")]
    public void HeadsMovedByAnOutsideGitAreSeenAtOnce()
    {
        // GetHead caches a head against its loose ref file's stamp: each outside update must still show immediately.
        GitStore store = Server.Store;
        ObjectId tree = store.WriteTree([new GitEntry("f", EntryKind.File, store.WriteBlob("x"u8.ToArray()))]);
        ObjectId? previous = null;
        for (int i = 0; i < 5; i++)
        {
            ObjectId commit = store.WriteCommit(tree, previous is null ? [] : [previous], $"outside {i}");
            Git("update-ref", "refs/heads/outside", commit.Sha);
            Assert.Equal(commit, store.GetHead("outside"));
            Assert.Equal(commit, store.GetHead("outside")); // the cached answer
            previous = commit;
        }
        Git("update-ref", "-d", "refs/heads/outside");
        Assert.Null(store.GetHead("outside"));
    }

    [Fact]
    [Trait("Tier", "Real")]
    public void TreesAreByteIdenticalToGitMktree()
    {
        GitStore store = Server.Store;
        ObjectId blob = store.WriteBlob("x"u8.ToArray());
        ObjectId sub = store.WriteTree([new GitEntry("f", EntryKind.File, blob)]);
        // Git sorts directories as if their names ended in '/': "a.b" < "a/" < "a0".
        GitEntry[] entries =
        [
            new("a0", EntryKind.Exec, blob), new("a", EntryKind.Dir, sub), new("a.b", EntryKind.Link, blob), new("a-c", EntryKind.File, blob),
        ];
        ObjectId ours = store.WriteTree(entries);
        string input = $"100755 blob {blob.Sha}\ta0\n040000 tree {sub.Sha}\ta\n120000 blob {blob.Sha}\ta.b\n100644 blob {blob.Sha}\ta-c\n";
        var psi = new System.Diagnostics.ProcessStartInfo("git") { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add("-C");
        psi.ArgumentList.Add(GitDir);
        psi.ArgumentList.Add("mktree");
        using var p = System.Diagnostics.Process.Start(psi)!;
        p.StandardInput.Write(input);
        p.StandardInput.Close();
        string theirs = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        Assert.Equal(theirs, ours.Sha);
        Assert.Equal(["a-c", "a.b", "a", "a0"], store.ReadTree(ours).Select(e => e.Name).ToArray());
    }

    /// <summary>
    /// Remotes are refused unless the operator allows them (`--allow-remote`; this fixture allows none): the url write
    /// fails with EACCES and nothing is fetched. RemoteTests fetch and push through real git servers.
    /// </summary>
    [Fact]
    public async Task RemotesAreRefusedUnlessAllowed()
    {
        await C.MkdirAsync("remotes", "origin");
        Assert.Equal("error: remote url is not defined", await ErrorOf(() => Echo(C, "remotes/origin/fetch", "master")));
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => Echo(C, "remotes/origin/url", GitDir));
        Assert.Equal(Errno.EACCES, e.Errno);
        Assert.Equal("", await Read(C, "remotes/origin/url"));
        await C.RemovePathAsync("remotes/origin");
        Assert.Empty(await C.ListAsync("remotes"));
    }

    [Fact]
    public async Task HostileWalksAndManyFidsAreHandled()
    {
        uint fid = await C.WalkAsync(C.RootFid, ["..", "..", "branch", "..", "..", "trees"]);
        Assert.Equal("trees", (await C.StatAsync(fid)).Name);
        Assert.Equal("'.' is not valid in 9p", await ErrorOf(() => C.WalkAsync(C.RootFid, ["."])));
        Assert.Equal("No such file or directory", await ErrorOf(() => C.WalkAsync(C.RootFid, ["nothing"])));
        Assert.Equal("No such file or directory", await ErrorOf(() => C.WalkAsync(C.RootFid, ["trees", "D-xyz"])));
        var fids = new List<Task<uint>>();
        for (int i = 0; i < 3000; i++)
        {
            fids.Add(C.WalkAsync(C.RootFid, ["branch"]));
        }
        foreach (uint f in await Task.WhenAll(fids))
        {
            await C.ClunkAsync(f);
        }
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => C.RpcAsync(new Fcall { Type = MessageType.Tread, Fid = 123456, Count = 10 }));
        Assert.Equal(Errno.EBADF, e.Errno);

        // A tiny write at a 2 GiB offset must not make the server allocate 2 GiB.
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "f", "x");
        uint file = await C.WalkAsync($"{tx}/rw/f");
        await C.OpenAsync(file, P9.OWRITE);
        e = await Assert.ThrowsAsync<NinePException>(() => C.WriteAsync(file, 2UL * 1024 * 1024 * 1024, "y"u8.ToArray()));
        Assert.Equal(Errno.EFBIG, e.Errno);
        Assert.Equal("x", await Read(C, $"{tx}/rw/f"));
    }
}
