namespace Kit.Linux;

/// <summary>
/// A lock file held with flock(2) for as long as its stream is open: .NET takes LOCK_EX|LOCK_NB for FileShare.None.
/// The kernel drops it when the holder dies, however it dies, so holding it says something no pid file can: no other
/// process holds it now.
/// </summary>
public static class FileLock
{
    /// <summary>The held lock on <paramref name="path"/> (created 0600 and empty if missing), or null when another holds it.</summary>
    public static FileStream? TryTake(string path)
    {
        var options = new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = FileAccess.ReadWrite, Share = FileShare.None };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        try
        {
            return new FileStream(path, options);
        }
        catch (IOException)
        {
            return null;
        }
    }
}
