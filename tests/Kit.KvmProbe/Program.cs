using System.Runtime.InteropServices;

namespace Kit.KvmProbe;

/// <summary>
/// Proves /dev/kvm works where it runs: KVM_GET_API_VERSION, KVM_CREATE_VM, KVM_CREATE_VCPU
/// (Documentation/virt/kvm/api.rst, section 4). Prints <c>api=12 vm=ok vcpu=ok</c> and exits 0, or one error line
/// on stderr and exits 1. The nested-runner test runs it inside the L1 guest.
/// </summary>
internal static partial class Program
{
    // _IO(KVMIO = 0xAE, nr): no size and no direction bits.
    private const nuint KVM_GET_API_VERSION = 0xAE00;
    private const nuint KVM_CREATE_VM = 0xAE01;
    private const nuint KVM_CREATE_VCPU = 0xAE41;

    private const int O_RDWR = 0x2;
    private const int O_CLOEXEC = 0x80000;

    private static int Main()
    {
        int kvm = Open("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (kvm < 0)
        {
            return Fail("open /dev/kvm");
        }
        int vm = -1;
        int vcpu = -1;
        try
        {
            int api = Ioctl(kvm, KVM_GET_API_VERSION, 0);
            if (api < 0)
            {
                return Fail("KVM_GET_API_VERSION");
            }
            vm = Ioctl(kvm, KVM_CREATE_VM, 0);
            if (vm < 0)
            {
                return Fail("KVM_CREATE_VM");
            }
            vcpu = Ioctl(vm, KVM_CREATE_VCPU, 0);
            if (vcpu < 0)
            {
                return Fail("KVM_CREATE_VCPU");
            }
            Console.WriteLine($"api={api} vm=ok vcpu=ok");
            return 0;
        }
        finally
        {
            foreach (int fd in (int[])[vcpu, vm, kvm])
            {
                if (fd >= 0)
                {
                    _ = Close(fd);
                }
            }
        }
    }

    private static int Fail(string what)
    {
        int errno = Marshal.GetLastPInvokeError();
        Console.Error.WriteLine($"kvm-probe: {what} failed: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})");
        return 1;
    }

    // SAFETY: open(2) reads the NUL-terminated path the marshaller builds from a managed string for the duration
    // of the call only; the returned descriptor is an int owned by the caller.
    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    // SAFETY: the three KVM requests used here take an integer argument (0 = default VM type, vCPU id 0) and
    // never dereference it as a pointer, so passing a plain value as the variadic third argument is sound on the
    // x86-64 SysV ABI, where variadic integers travel in the same registers as fixed ones.
    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, nuint request, nint argument);

    // SAFETY: close(2) on a descriptor this process opened and closes exactly once.
    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}
