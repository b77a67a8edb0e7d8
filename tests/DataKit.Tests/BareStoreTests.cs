using System.Net;
using System.Text;
using Kit.DataKit.Client;
using Kit.DataKit.Store;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.DataKit.Tests;

/// <summary>
/// Issue 14 item 4: a new store is a bare repository. The non-bare store of older versions had an empty index under a
/// HEAD with files, so `git status` there showed every file deleted and a plain `git commit` committed the deletion.
/// </summary>
[Trait("Tier", "Real")]
public sealed class BareStoreTests : DataKitTestBase
{
    private static byte[] B(string s) => Encoding.UTF8.GetBytes(s);

    [Fact]
    public async Task ANewStoreIsBareAndGitStatusShowsNothingDeleted()
    {
        await using (DataKitClient dk = await DataKitClient.ConnectAsync(Address, TestContext.Current.CancellationToken))
        {
            Branch master = await dk.BranchAsync("master", TestContext.Current.CancellationToken);
            for (int i = 0; i < 2; i++)
            {
                await using Transaction t = await master.TransactionAsync();
                await t.CreateDirAsync($"d{i}");
                await t.CreateFileAsync($"d{i}/f", B($"file {i}\n"));
                await t.CommitAsync($"commit {i}");
            }
        }

        Assert.Equal("true", Git("rev-parse", "--is-bare-repository").Trim());
        Assert.False(Directory.Exists(Path.Combine(GitDir, ".git")));
        // git refuses `status` and `commit` where there is no work tree, rather than reporting d0/f and d1/f deleted
        // (and committing their deletion) as it did in the non-bare store.
        ProcessResult status = await ProcessRunner.RunAsync("git", ["-C", GitDir, "status", "--porcelain"],
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal("", status.StandardOutput);
        Assert.DoesNotContain("deleted", status.Output, StringComparison.Ordinal);
        Assert.Equal("commit 1\ncommit 0\n", Git("log", "--format=%s", "master"));
        Assert.Equal("d0/f\nd1/f\n", Git("ls-tree", "-r", "--name-only", "master"));
        Git("fsck", "--strict", "--no-dangling");
    }

    /// <summary>A store made by an older kit (non-bare, files only in commits) opens, serves, and stays non-bare.</summary>
    [Fact]
    public async Task AnOldNonBareStoreStillOpensAndServes()
    {
        string old = Path.Combine(Path.GetTempPath(), "kit-datakit-old-" + Guid.NewGuid().ToString("N")[..12]);
        try
        {
            // What GitStore.Open made before: `git init` (non-bare) and commits written as objects and refs only.
            LibGit2Sharp.Repository.Init(old);
            using (GitStore store = GitStore.Open(old))
            {
                var tree = store.WriteTree([new GitEntry("old.txt", EntryKind.File, store.WriteBlob(B("from before\n")))]);
                Assert.True(store.TrySetHead("master", store.WriteCommit(tree, [], "old"), null, "test"));
            }

            var server = new DataKitServer(old);
            await using (server)
            {
                ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
                var ep = (IPEndPoint)server.Listen(any!);
                await using DataKitClient dk = await DataKitClient.ConnectAsync(new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}"), TestContext.Current.CancellationToken);
                Branch master = await dk.BranchAsync("master", TestContext.Current.CancellationToken);
                Commit head = (await master.HeadAsync(TestContext.Current.CancellationToken))!;
                Assert.Equal("from before\n", await head.Tree.ReadTextAsync("old.txt", TestContext.Current.CancellationToken));
                await using (Transaction t = await master.TransactionAsync())
                {
                    await t.CreateFileAsync("new.txt", B("from now\n"));
                    await t.CommitAsync("new");
                }
                head = (await master.HeadAsync(TestContext.Current.CancellationToken))!;
                Assert.Equal("from now\n", await head.Tree.ReadTextAsync("new.txt", TestContext.Current.CancellationToken));
            }

            Assert.True(Directory.Exists(Path.Combine(old, ".git")));
            ProcessResult log = await ProcessRunner.RunAsync("git", ["-C", old, "log", "--format=%s", "master"],
                cancellationToken: TestContext.Current.CancellationToken);
            Assert.Equal("new\nold\n", log.StandardOutput);
        }
        finally
        {
            Directory.Delete(old, recursive: true);
        }
    }

    [Fact]
    public void OpenRefusesAFileAndANonEmptyDirectoryThatIsNotARepository()
    {
        string dir = Path.Combine(Path.GetTempPath(), "kit-datakit-refuse-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dir);
        try
        {
            string file = Path.Combine(dir, "file");
            File.WriteAllText(file, "x");
            IOException e = Assert.Throws<IOException>(() => GitStore.Open(file));
            Assert.Equal($"{file} is a file, not a git repository", e.Message);

            e = Assert.Throws<IOException>(() => GitStore.Open(dir));
            Assert.Contains("neither empty nor a git repository", e.Message, StringComparison.Ordinal);
            Assert.Equal(["file"], Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName));

            // An empty directory becomes a (bare) store.
            string empty = Path.Combine(dir, "empty");
            Directory.CreateDirectory(empty);
            using GitStore store = GitStore.Open(empty);
            Assert.True(File.Exists(Path.Combine(empty, "HEAD")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
