using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    private const int F_GETFD = 1, F_SETFD = 2, F_GETFL = 3, F_SETFL = 4, FD_CLOEXEC = 1;

    /// <summary>Sets O_NONBLOCK on a descriptor (fcntl(2) F_GETFL, then F_SETFL); false with errno if either failed.</summary>
    public static bool SetNonBlocking(int fd)
    {
        int flags = Fcntl(fd, F_GETFL, 0);
        return flags >= 0 && Fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
    }

    /// <summary>As <see cref="SetNonBlocking(int)"/>, for a descriptor a handle owns.</summary>
    public static bool SetNonBlocking(SafeHandle fd)
    {
        int flags = Fcntl(fd, F_GETFL, 0);
        return flags >= 0 && Fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
    }

    /// <summary>True when the descriptor has FD_CLOEXEC (a child started with exec does not inherit it).</summary>
    public static bool IsCloseOnExec(int fd) => (Fcntl(fd, F_GETFD, 0) & FD_CLOEXEC) != 0;

    /// <summary>Clears the descriptor flags (FD_CLOEXEC is the only one), so a child inherits it; false with errno.</summary>
    public static bool ClearCloseOnExec(int fd) => Fcntl(fd, F_SETFD, 0) == 0;

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(SafeHandle fd, int command, int argument);
}
