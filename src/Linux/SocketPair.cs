using System.Net.Sockets;

namespace Kit.Linux;

/// <summary>
/// A connected pair of Unix stream sockets (socketpair(2)), one end for this process and one for a child to inherit.
/// A child reached this way needs no socket file: nothing in the file system for another user to reach, and nothing
/// left behind if either process is killed.
/// </summary>
public sealed class SocketPair : IDisposable
{
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
        if (!Sys.CreateSocketPair(out int ours, out int child))
        {
            throw new IOException($"socketpair failed (errno {Sys.LastErrno})");
        }
        // Only the child's end loses close-on-exec: a child started by anyone else in this process before it is closed
        // here inherits it too, which is why the window is kept to one start.
        if (!Sys.ClearCloseOnExec(child))
        {
            int errno = Sys.LastErrno;
            Sys.CloseAll([ours, child]);
            throw new IOException($"fcntl(F_SETFD) failed (errno {errno})");
        }
        return new SocketPair(new Socket(new SafeSocketHandle(ours, ownsHandle: true)), child);
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
}
