using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// The general-purpose descriptor calls the parts share (open, close, read, write, fcntl, poll, eventfd) and errno
/// helpers, one file per call as dotnet/runtime's System.Native interop is laid out. What only one part needs stays
/// with it: KVM's ioctls and guest memory in HyperKit/Kvm, vhost-user's SCM_RIGHTS in HyperKit/VhostUser, epoll and
/// the non-blocking connect in VPNKit/Links.
/// </summary>
/// <remarks>
/// Every call returns -1 and sets errno on failure; the imports set SetLastError, so <see cref="LastErrno"/> reads it
/// right after the call. The overloads that take a <see cref="SafeHandle"/> keep the descriptor open for the call and
/// throw <see cref="ObjectDisposedException"/> once it is closed, which the links use to end a read loop. No unsafe
/// code: buffers pass as spans, which the source-generated stubs pin for the call.
/// </remarks>
public static partial class Sys
{
    // asm-generic/errno-base.h and errno.h (x86-64 and arm64 share them).
    public const int EINTR = 4, EBADF = 9, EAGAIN = 11;

    // asm-generic/fcntl.h.
    public const int O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CREAT = 0x40, O_TRUNC = 0x200, O_NONBLOCK = 0x800,
        O_NOFOLLOW = 0x20000, O_CLOEXEC = 0x80000;

    /// <summary>errno of the last call made through these imports on this thread.</summary>
    public static int LastErrno => Marshal.GetLastPInvokeError();

    /// <summary>"No such file or directory (errno 2)": the message and the number, for error text.</summary>
    public static string ErrnoText(int errno) => $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
}
