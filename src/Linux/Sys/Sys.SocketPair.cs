using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    private const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000;

    /// <summary>
    /// socketpair(2): a connected pair of Unix stream sockets as raw descriptors, both close-on-exec; false with errno.
    /// (<see cref="SocketPair"/> is the pair whose one end a child process inherits.)
    /// </summary>
    public static bool CreateSocketPair(out int first, out int second)
    {
        Span<int> fds = [-1, -1];
        int r = SocketPairNative(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
        first = fds[0];
        second = fds[1];
        return r == 0;
    }

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPairNative(int domain, int type, int protocol, Span<int> fds);
}
