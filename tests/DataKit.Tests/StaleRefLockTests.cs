using System.Text;
using Kit.DataKit.Store;
using Kit.Testing;
using LibGit2Sharp;

namespace Kit.DataKit.Tests;

/// <summary>
/// A writer killed between writing refs/heads/NAME.lock and renaming it over NAME leaves the lock file, and every later
/// update of that branch failed with EIO ("failed to lock file"): CI's killed-server test caught it. The store's next
/// first opener removes it; an opener while another store has the directory open removes nothing.
/// </summary>
public sealed class StaleRefLockTests
{
    private static ObjectId Commit(GitStore store, string text, ObjectId? parent) =>
        store.WriteCommit(store.WriteTree([new GitEntry("f", EntryKind.File, store.WriteBlob(Encoding.UTF8.GetBytes(text)))]), parent is null ? [] : [parent], text);

    [Fact]
    public async Task A_lock_file_a_dead_writer_left_is_removed_by_the_next_owner_and_the_branch_moves_again()
    {
        string dir = Directory.CreateTempSubdirectory("kit-datakit-stale-").FullName;
        try
        {
            string lockFile = Path.Combine(dir, "refs", "heads", "master.lock");
            ObjectId first;
            using (GitStore owner = GitStore.Open(dir))
            {
                first = Commit(owner, "one", null);
                Assert.True(owner.TrySetHead("master", first, null, "test"));
                // What a writer killed mid-update leaves: the new value in NAME.lock, never renamed.
                File.WriteAllText(lockFile, new string('0', 40) + "\n");
                using GitStore second = GitStore.Open(dir);
                Assert.Empty(second.RemovedStaleLocks); // the owner is alive: the lock could be its writer's
                Assert.True(File.Exists(lockFile));
            }

            using (GitStore next = GitStore.Open(dir))
            {
                Assert.Equal([Path.Combine("refs", "heads", "master.lock")], next.RemovedStaleLocks);
                Assert.False(File.Exists(lockFile));
                Assert.True(next.TrySetHead("master", Commit(next, "two", first), first, "test"));
            }
            ProcessResult log = await ProcessRunner.RunAsync("git", ["-C", dir, "log", "--format=%s", "master"], cancellationToken: TestContext.Current.CancellationToken);
            Assert.Equal("two\none\n", log.StandardOutput);
            ProcessResult fsck = await ProcessRunner.RunAsync("git", ["-C", dir, "fsck", "--strict"], cancellationToken: TestContext.Current.CancellationToken);
            Assert.True(fsck.ExitCode == 0, fsck.ToString());
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
