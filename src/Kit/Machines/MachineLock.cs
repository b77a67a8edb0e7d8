namespace Kit.Cli.Machines;

/// <summary>
/// The machine's lock file, held with flock(2) (.NET takes LOCK_EX|LOCK_NB for FileShare.None): by the daemon for its
/// whole life, so "is the machine running" has an answer no stale pid file can fake, and briefly by <c>kit up</c> and
/// <c>kit rm</c> while they decide. The kernel drops it when the holder dies, however it dies.
/// </summary>
internal static class MachineLock
{
    /// <summary>The held lock, or null when another process holds it.</summary>
    public static FileStream? TryTake(MachinePaths paths) => Kit.Linux.FileLock.TryTake(paths.Lock);

    /// <summary>True when a process (the daemon) holds the lock now.</summary>
    public static bool IsHeld(MachinePaths paths)
    {
        if (!File.Exists(paths.Lock))
        {
            return false;
        }
        using FileStream? probe = TryTake(paths);
        return probe is null;
    }
}
