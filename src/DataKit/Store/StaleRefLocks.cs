namespace Kit.DataKit.Store;

/// <summary>
/// Ref lock files left by a writer that died. libgit2 and git update a ref by writing <c>NAME.lock</c> and renaming it
/// over <c>NAME</c>; a writer killed in between (SIGKILL, an OOM kill, a power cut) leaves the lock file, and every
/// later update of that ref then fails ("failed to lock file"): the branch is stuck until someone deletes the file by
/// hand, which is what git itself asks for. Nothing in a lock file was acknowledged (a commit is acknowledged after
/// the rename), so removing one loses nothing.
/// The question is only whether its writer is gone. The first store opened on a git directory takes
/// <see cref="OwnerFile"/> with flock(2) (.NET's FileShare.None is LOCK_EX|LOCK_NB) and holds it while open; the kernel
/// drops it when the holder dies, however it dies. So whoever takes it knows that no other DataKit has the store open,
/// and the ref lock files present then are a dead writer's. A later opener (another process, while the first runs)
/// does not get the lock and removes nothing. Not covered: a plain git command writing to the store at that moment
/// (its rename then fails, and it says so) and a fetch child of a killed server that outlives it (the same).
/// </summary>
internal static class StaleRefLocks
{
    public const string OwnerFile = "kit-datakit.lock";

    /// <summary>The held owner lock of <paramref name="gitDir"/>, or null when another DataKit holds it.</summary>
    public static FileStream? TryOwn(string gitDir) => Kit.Linux.FileLock.TryTake(Path.Combine(gitDir, OwnerFile));

    /// <summary>Removes HEAD.lock, packed-refs.lock and refs/**/*.lock (call only while owning the store); returns what it removed.</summary>
    public static List<string> Remove(string gitDir)
    {
        var removed = new List<string>();
        IEnumerable<string> candidates = new[] { "HEAD.lock", "packed-refs.lock" }.Select(f => Path.Combine(gitDir, f));
        string refs = Path.Combine(gitDir, "refs");
        if (Directory.Exists(refs))
        {
            candidates = candidates.Concat(Directory.EnumerateFiles(refs, "*.lock", new EnumerationOptions { RecurseSubdirectories = true, AttributesToSkip = FileAttributes.ReparsePoint }));
        }
        foreach (string file in candidates)
        {
            if (File.Exists(file))
            {
                File.Delete(file);
                removed.Add(Path.GetRelativePath(gitDir, file));
            }
        }
        return removed;
    }
}
