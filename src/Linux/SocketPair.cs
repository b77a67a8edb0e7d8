using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// A connected pair of Unix stream sockets (socketpair(2)), one end for this process and one for a child to inherit.
/// A child reached this way needs no socket file: nothing in the file system for another user to reach, and nothing
/// left behind if either process is killed.
/// </summary>
public sealed partial class SocketPair : IDisposable
{
    private const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000;
    private int _childFd;

    private SocketPair(Socket ours, int childFd)
    {
        Ours = ours;
        _childFd = childFd;
    }

    /// <summary>This process's end.</summary>
    public Socket Ours { get; }

    /// <summary>
    /// The descriptor number of the child's end. It is inheritable (no FD_CLOEXEC) until <see cref="CloseChildEnd"/>,
    /// so start the child, then close it here.
    /// </summary>
    public int ChildFd => _childFd >= 0 ? _childFd : throw new ObjectDisposedException(nameof(SocketPair));

    public static SocketPair Create()
    {
        Span<int> fds = stackalloc int[2];
        if (NativeSocketPair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ref MemoryMarshal.GetReference(fds)) != 0)
        {
            throw new IOException($"socketpair failed (errno {Marshal.GetLastPInvokeError()})");
        }
        // Only the child's end loses close-on-exec: a child started by anyone else in this process before it is closed
        // here inherits it too, which is why the window is kept to one start.
        if (!Sys.ClearCloseOnExec(fds[1]))
        {
            int errno = Sys.LastErrno;
            Sys.CloseAll(fds);
            throw new IOException($"fcntl(F_SETFD) failed (errno {errno})");
        }
        return new SocketPair(new Socket(new SafeSocketHandle(fds[0], ownsHandle: true)), fds[1]);
    }

    /// <summary>Closes this process's copy of the child's end (the child keeps its own).</summary>
    public void CloseChildEnd()
    {
        int fd = Interlocked.Exchange(ref _childFd, -1);
        if (fd >= 0)
        {
            Sys.Close(fd);
        }
    }

    public void Dispose()
    {
        CloseChildEnd();
        Ours.Dispose();
    }

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int NativeSocketPair(int domain, int type, int protocol, ref int fds);
}
