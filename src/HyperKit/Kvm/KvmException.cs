using Kit.HyperKit.Hypervisor;
using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>A KVM or libc call failed; the message names the call and errno so the user can act on it.</summary>
public sealed class KvmException : HypervisorException
{
    public KvmException(string message) : base(message)
    {
    }

    public KvmException(string what, int errno) : base($"{what} failed: {Sys.ErrnoText(errno)}")
    {
        Errno = errno;
    }

    public int Errno { get; }
}
