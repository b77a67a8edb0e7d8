using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>asm-generic/fcntl.h: fail unless the path is a directory.</summary>
    public const int O_DIRECTORY = 0x10000;

    /// <summary>fsync(2): 0, or -1 with errno.</summary>
    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    public static partial int Fsync(int fd);

    /// <summary>
    /// fsync(2) on a directory, which makes the entries created or renamed in it durable (fsync(2): "Calling fsync()
    /// does not necessarily ensure that the entry in the directory containing the file has also reached disk. For
    /// that an explicit fsync() on a file descriptor for the directory is also needed"). .NET cannot open a directory.
    /// </summary>
    /// <exception cref="IOException">open or fsync failed.</exception>
    public static void SyncDirectory(string path)
    {
        int fd = Open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
        {
            throw new IOException($"open {path}: {ErrnoText(LastErrno)}");
        }
        try
        {
            if (Fsync(fd) != 0)
            {
                throw new IOException($"fsync {path}: {ErrnoText(LastErrno)}");
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }
}
