using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    public const int O_DIRECTORY = 0x10000;

    /// <summary>fsync(2): the file's data and metadata reach stable storage. 0, or -1 with errno.</summary>
    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    public static partial int Fsync(int fd);

    /// <summary>
    /// fsync(2) on a directory: makes its entries (a file created, renamed into it or removed) durable. A file's own
    /// fsync does not cover the name that points at it (fsync(2), NOTES). Throws <see cref="IOException"/> with errno.
    /// </summary>
    public static void FsyncDirectory(string path) => FsyncPath(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

    /// <summary>fsync(2) on a file by path (opened read-only: Linux syncs through any descriptor). Throws <see cref="IOException"/>.</summary>
    public static void FsyncFile(string path) => FsyncPath(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

    private static void FsyncPath(string path, int flags)
    {
        int fd = Open(path, flags);
        if (fd < 0)
        {
            throw new IOException($"cannot open {path} to sync it: {ErrnoText(LastErrno)}");
        }
        try
        {
            // EINTR is not returned by fsync on Linux file systems, but a retry costs nothing if it were.
            int rc;
            do
            {
                rc = Fsync(fd);
            }
            while (rc < 0 && LastErrno == EINTR);
            if (rc < 0)
            {
                throw new IOException($"cannot sync {path}: {ErrnoText(LastErrno)}");
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }
}
