using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.VhostUser;

/// <summary>
/// A connected Unix stream pair for a frontend started as a child process: our end is a <see cref="Socket"/> to hand
/// to <see cref="VhostUserBackend.Serve"/>; theirs has FD_CLOEXEC cleared so the child inherits it under the same
/// number (QEMU: <c>-chardev socket,id=c0,fd=N</c>). Close theirs in the parent once the child has started.
/// </summary>
public static class VhostUserSocketPair
{
    public static (Socket Ours, SafeHandle TheirsFd) Create()
    {
        if (!VhostUserInterop.SocketPair(out int ours, out int theirs))
        {
            throw new IOException($"socketpair failed (errno {VhostUserInterop.Errno})");
        }
        var theirsHandle = new SafeFileHandle(theirs, ownsHandle: true);
        if (!VhostUserInterop.SetInheritable(theirs, true))
        {
            int errno = VhostUserInterop.Errno;
            theirsHandle.Dispose();
            _ = VhostUserInterop.Close(ours);
            throw new IOException($"fcntl(F_SETFD) failed (errno {errno})");
        }
        return (new Socket(new SafeSocketHandle(ours, ownsHandle: true)), theirsHandle);
    }
}
