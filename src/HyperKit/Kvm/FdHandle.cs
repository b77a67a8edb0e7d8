using Kit.Linux;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Kvm;

/// <summary>A Linux file descriptor owned by managed code, closed exactly once.</summary>
internal sealed class FdHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public FdHandle(int fd) : base(ownsHandle: true) => SetHandle(fd);

    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Sys.Close((int)handle) == 0;

    /// <summary>Wraps the result of a call that returns a descriptor, or throws with errno.</summary>
    public static FdHandle FromResult(int fd, string what)
    {
        if (fd < 0)
        {
            throw new KvmException(what, Sys.LastErrno);
        }
        return new FdHandle(fd);
    }
}
