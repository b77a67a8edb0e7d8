using Kit.HyperKit.Hypervisor;
using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// A KVM virtual machine: memory slots, in-kernel interrupt controllers, irqfd/ioeventfd, MSI, vCPUs. The
/// <see cref="IHypervisorVm"/> of the KVM backend.
/// </summary>
public sealed unsafe class KvmVm : IHypervisorVm
{
    private readonly FdHandle _fd;
    private readonly List<FdHandle> _eventFds = [];

    internal KvmVm(KvmSystem system, FdHandle fd)
    {
        System = system;
        _fd = fd;
    }

    public KvmSystem System { get; }

    internal int Fd => _fd.Fd;

    private void Check(int result, string what)
    {
        if (result < 0)
        {
            throw new KvmException(what, Sys.LastErrno);
        }
    }

    /// <summary>KVM_SET_USER_MEMORY_REGION: guest physical [gpa, gpa+size) is backed by host memory at hostAddress.</summary>
    public void SetMemoryRegion(uint slot, ulong gpa, ulong size, nint hostAddress, bool readOnly = false)
    {
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = slot,
            Flags = readOnly ? 2u : 0u,
            GuestPhysAddr = gpa,
            MemorySize = size,
            UserspaceAddr = (ulong)hostAddress,
        };
        // SAFETY: region is a stack value of the exact UAPI layout; the kernel only reads it. The caller keeps the
        // host mapping alive for the VM's lifetime (GuestMemory outlives the VM in Machine).
        Check(LibC.Ioctl(Fd, KvmIoctl.SetUserMemoryRegion, &region), "KVM_SET_USER_MEMORY_REGION");
    }

    /// <summary>KVM_SET_TSS_ADDR: x86 needs a 3-page region for the real-mode TSS (Intel).</summary>
    public void SetTssAddress(ulong address) =>
        Check(LibC.Ioctl(Fd, KvmIoctl.SetTssAddr, (nint)address), "KVM_SET_TSS_ADDR");

    /// <summary>KVM_SET_IDENTITY_MAP_ADDR: one page for the real-mode identity page table (Intel).</summary>
    public void SetIdentityMapAddress(ulong address)
    {
        // SAFETY: the kernel reads one u64 from this stack slot.
        Check(LibC.Ioctl(Fd, KvmIoctl.SetIdentityMapAddr, &address), "KVM_SET_IDENTITY_MAP_ADDR");
    }

    /// <summary>KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU LAPICs. Must precede vCPU creation.</summary>
    public void CreateIrqchip() => Check(LibC.Ioctl(Fd, KvmIoctl.CreateIrqchip, 0), "KVM_CREATE_IRQCHIP");

    /// <summary>KVM_CREATE_PIT2 with a dummy speaker port (port 0x61 reads handled in-kernel).</summary>
    public void CreatePit2()
    {
        var config = new KvmPitConfig { Flags = 1 /* KVM_PIT_SPEAKER_DUMMY */ };
        // SAFETY: stack struct of the UAPI layout (64 bytes), read-only for the kernel.
        Check(LibC.Ioctl(Fd, KvmIoctl.CreatePit2, &config), "KVM_CREATE_PIT2");
    }

    /// <summary>KVM_IRQ_LINE: drives an in-kernel PIC/IOAPIC input (GSI) to a level.</summary>
    public void SetIrqLine(uint gsi, bool level)
    {
        var irq = new KvmIrqLevel { Irq = gsi, Level = level ? 1u : 0u };
        // SAFETY: stack struct read by the kernel.
        Check(LibC.Ioctl(Fd, KvmIoctl.IrqLine, &irq), "KVM_IRQ_LINE");
    }

    /// <summary>KVM_SIGNAL_MSI: injects one message-signalled interrupt (address/data as the guest programmed them).</summary>
    public bool SignalMsi(ulong address, uint data)
    {
        var msi = new KvmMsi { AddressLo = (uint)address, AddressHi = (uint)(address >> 32), Data = data };
        // SAFETY: stack struct read by the kernel. Returns >0 delivered, 0 blocked by the guest, <0 error.
        return LibC.Ioctl(Fd, KvmIoctl.SignalMsi, &msi) >= 0;
    }

    /// <summary>Creates an eventfd owned by this VM (closed with it).</summary>
    public EventFd CreateEventFd()
    {
        var handle = FdHandle.FromResult(Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK), "eventfd");
        _eventFds.Add(handle);
        return new EventFd(handle);
    }

    /// <summary>KVM_IRQFD: a write to the eventfd raises GSI (edge) without a trip through this process.</summary>
    public void AssignIrqfd(EventFd eventFd, uint gsi)
    {
        var irqfd = new KvmIrqfd { Fd = (uint)eventFd.Fd, Gsi = gsi };
        // SAFETY: stack struct read by the kernel; the eventfd stays open while the VM lives (_eventFds).
        Check(LibC.Ioctl(Fd, KvmIoctl.Irqfd, &irqfd), "KVM_IRQFD");
    }

    /// <summary>
    /// KVM_IOEVENTFD: a guest write of <paramref name="length"/> bytes to addr (a port when pio) completes in the kernel
    /// and signals the eventfd; with a datamatch only that value does.
    /// </summary>
    public void AssignIoeventfd(EventFd eventFd, ulong address, uint length, bool pio, ulong? datamatch = null)
    {
        var ioeventfd = new KvmIoeventfd
        {
            Addr = address,
            Len = length,
            Fd = eventFd.Fd,
            Flags = (datamatch.HasValue ? 1u : 0u) | (pio ? 2u : 0u),
            Datamatch = datamatch ?? 0,
        };
        // SAFETY: stack struct read by the kernel; the eventfd stays open while the VM lives.
        Check(LibC.Ioctl(Fd, KvmIoctl.Ioeventfd, &ioeventfd), "KVM_IOEVENTFD");
    }

    /// <summary>
    /// KVM_REGISTER_COALESCED_MMIO with pio set (KVM_CAP_COALESCED_PIO): guest writes to ports [port, port+size) no
    /// longer exit; KVM appends them to the ring every vCPU maps (<see cref="KvmCoalescedRing"/>), and the VMM must
    /// replay them, in order, before it handles the next exit. Returns null (and registers nothing) when this KVM
    /// cannot do it or the vCPU mapping does not include the ring.
    /// </summary>
    public KvmCoalescedRing? EnableCoalescedPio(KvmVcpu vcpu, ushort port, uint size)
    {
        int ringPage = System.CheckExtension(KvmCap.CoalescedMmio); // the ring's page offset in the vCPU mapping
        if (ringPage <= 0 || System.CheckExtension(KvmCap.CoalescedPio) <= 0)
        {
            return null;
        }
        KvmCoalescedRing? ring = KvmCoalescedRing.For(vcpu, ringPage);
        if (ring is null)
        {
            return null;
        }
        var zone = new KvmCoalescedMmioZone { Addr = port, Size = size, Pio = 1 };
        // SAFETY: stack struct of the UAPI layout (16 bytes), read by the kernel.
        Check(LibC.Ioctl(Fd, KvmIoctl.RegisterCoalescedMmio, &zone), "KVM_REGISTER_COALESCED_MMIO");
        return ring;
    }

    /// <summary>KVM_CREATE_VCPU and the mmap of its shared kvm_run page.</summary>
    public KvmVcpu CreateVcpu(int id)
    {
        _ = VcpuSignal.Number; // install the kick handler before any vCPU can need it
        int fd = LibC.Ioctl(Fd, KvmIoctl.CreateVcpu, id);
        return new KvmVcpu(this, id, FdHandle.FromResult(fd, $"KVM_CREATE_VCPU {id}"), System.VcpuMmapSize);
    }

    IVcpu IHypervisorVm.CreateVcpu(int id) => CreateVcpu(id);

    void IHypervisorVm.CreatePit() => CreatePit2();

    void IHypervisorVm.RegisterIoEvent(EventFd eventFd, ulong address, uint length, bool pio) =>
        AssignIoeventfd(eventFd, address, length, pio);

    void IHypervisorVm.RegisterIrqfd(EventFd eventFd, uint gsi) => AssignIrqfd(eventFd, gsi);

    IQueuedWrites? IHypervisorVm.EnableCoalescedPio(IVcpu vcpu, ushort port, uint size) =>
        EnableCoalescedPio(vcpu as KvmVcpu ?? throw new ArgumentException("not a vCPU of this KVM VM", nameof(vcpu)), port, size);

    public void Dispose()
    {
        foreach (FdHandle handle in _eventFds)
        {
            handle.Dispose();
        }
        _fd.Dispose();
    }
}
