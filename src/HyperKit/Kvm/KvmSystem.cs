using System.Runtime.InteropServices;
using Kit.HyperKit.Hypervisor;
using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>What this host's <c>/dev/kvm</c> can do, decided before any guest is started.</summary>
public enum KvmAvailability
{
    /// <summary>Hardware-assisted KVM (vmx or svm): Linux guests run at full speed.</summary>
    Hardware,
    /// <summary>
    /// KVM is the PVM flavour (kvm_pvm, no vmx/svm flag): ordinary guests are emulated instruction by instruction and a
    /// stock kernel would take hours to boot (testing-here.md section 1). Fine for tiny guest programs.
    /// </summary>
    Pvm,
    /// <summary>No usable /dev/kvm.</summary>
    Missing,
}

/// <summary>
/// The open <c>/dev/kvm</c> system handle: API version, extensions, supported CPUID, VM creation. The
/// <see cref="IHypervisor"/> of the KVM backend.
/// </summary>
public sealed unsafe class KvmSystem : IHypervisor
{
    public const string DevicePath = "/dev/kvm";
    private readonly FdHandle _fd;

    private KvmSystem(FdHandle fd) => _fd = fd;

    /// <summary>Opens /dev/kvm and checks the stable API version (12) and the extensions this VMM relies on.</summary>
    public static KvmSystem Open()
    {
        int fd = Sys.Open(DevicePath, Sys.O_RDWR | Sys.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Sys.LastErrno;
            throw new KvmException($"cannot open {DevicePath}: {Sys.ErrnoText(errno)}", errno);
        }
        var system = new KvmSystem(new FdHandle(fd));
        int version = LibC.Ioctl(fd, KvmIoctl.GetApiVersion, 0);
        if (version != 12)
        {
            system.Dispose();
            throw new KvmException($"{DevicePath} reports KVM API version {version}, this VMM needs 12");
        }
        foreach ((int cap, string name) in new[]
        {
            (KvmCap.UserMemory, "USER_MEMORY"), (KvmCap.Irqchip, "IRQCHIP"), (KvmCap.Pit2, "PIT2"),
            (KvmCap.ExtCpuid, "EXT_CPUID"), (KvmCap.Irqfd, "IRQFD"), (KvmCap.Ioeventfd, "IOEVENTFD"),
            (KvmCap.ImmediateExit, "IMMEDIATE_EXIT"),
        })
        {
            if (system.CheckExtension(cap) <= 0)
            {
                system.Dispose();
                throw new KvmException($"{DevicePath} lacks the KVM_CAP_{name} extension");
            }
        }
        return system;
    }

    /// <summary>Classifies the host without opening a VM (see <see cref="KvmAvailability"/>).</summary>
    public static KvmAvailability Probe()
    {
        if (!File.Exists(DevicePath))
        {
            return KvmAvailability.Missing;
        }
        if (Directory.Exists("/sys/module/kvm_pvm"))
        {
            return KvmAvailability.Pvm;
        }
        try
        {
            foreach (string line in File.ReadLines("/proc/cpuinfo"))
            {
                if (line.StartsWith("flags", StringComparison.Ordinal))
                {
                    string[] flags = line.Split(' ');
                    return Array.IndexOf(flags, "vmx") >= 0 || Array.IndexOf(flags, "svm") >= 0
                        ? KvmAvailability.Hardware : KvmAvailability.Pvm;
                }
            }
        }
        catch (IOException)
        {
        }
        return KvmAvailability.Hardware;
    }

    internal int Fd => _fd.Fd;

    public int ApiVersion => LibC.Ioctl(Fd, KvmIoctl.GetApiVersion, 0);

    /// <summary>KVM_CHECK_EXTENSION: 0 when absent, otherwise a capability-specific positive value.</summary>
    public int CheckExtension(int capability) => LibC.Ioctl(Fd, KvmIoctl.CheckExtension, capability);

    public int VcpuMmapSize
    {
        get
        {
            int size = LibC.Ioctl(Fd, KvmIoctl.GetVcpuMmapSize, 0);
            return size > 0 ? size : throw new KvmException("KVM_GET_VCPU_MMAP_SIZE", Sys.LastErrno);
        }
    }

    /// <summary>KVM_GET_SUPPORTED_CPUID, growing the buffer while the kernel answers E2BIG.</summary>
    public KvmCpuidEntry2[] GetSupportedCpuid()
    {
        for (int n = 64; n <= 4096; n *= 2)
        {
            int bytes = 8 + n * sizeof(KvmCpuidEntry2);
            byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
            try
            {
                // SAFETY: buffer holds a kvm_cpuid2 header (nent, padding) followed by n entries; the kernel writes at
                // most nent entries and updates nent, both bounded by the allocation.
                *(uint*)buffer = (uint)n;
                if (LibC.Ioctl(Fd, KvmIoctl.GetSupportedCpuid, buffer) < 0)
                {
                    int errno = Sys.LastErrno;
                    if (errno == LibC.E2BIG)
                    {
                        continue;
                    }
                    throw new KvmException("KVM_GET_SUPPORTED_CPUID", errno);
                }
                int count = (int)Math.Min(*(uint*)buffer, (uint)n);
                return new ReadOnlySpan<KvmCpuidEntry2>(buffer + 8, count).ToArray();
            }
            finally
            {
                NativeMemory.Free(buffer);
            }
        }
        throw new KvmException("KVM_GET_SUPPORTED_CPUID returned more than 4096 entries");
    }

    /// <summary>KVM_CREATE_VM with the default machine type.</summary>
    public KvmVm CreateVm()
    {
        int fd;
        do
        {
            fd = LibC.Ioctl(Fd, KvmIoctl.CreateVm, 0);
        }
        while (fd < 0 && Sys.LastErrno == Sys.EINTR);
        return new KvmVm(this, FdHandle.FromResult(fd, "KVM_CREATE_VM"));
    }

    string IHypervisor.Name => "KVM";

    bool IHypervisor.HasTscDeadlineTimer => CheckExtension(KvmCap.TscDeadlineTimer) > 0;

    IHypervisorVm IHypervisor.CreateVm() => CreateVm();

    CpuidEntry[] IHypervisor.GetSupportedCpuid()
    {
        KvmCpuidEntry2[] supported = GetSupportedCpuid();
        var entries = new CpuidEntry[supported.Length];
        for (int i = 0; i < supported.Length; i++)
        {
            KvmCpuidEntry2 e = supported[i];
            entries[i] = new CpuidEntry { Function = e.Function, Index = e.Index, Flags = e.Flags, Eax = e.Eax, Ebx = e.Ebx, Ecx = e.Ecx, Edx = e.Edx };
        }
        return entries;
    }

    public void Dispose() => _fd.Dispose();
}
