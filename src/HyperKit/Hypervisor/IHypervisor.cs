using Kit.HyperKit.Kvm;

namespace Kit.HyperKit.Hypervisor;

/// <summary>
/// The seam between the VMM and the host's hypervisor (cloud-hypervisor's <c>hypervisor</c> crate: a Hypervisor makes
/// VMs, a VM makes vCPUs, a vCPU runs and returns a <see cref="VmExit"/>). KVM is the one implementation
/// (<see cref="KvmSystem"/>, <see cref="KvmVm"/>, <see cref="KvmVcpu"/>); devices never see any of it.
/// </summary>
public interface IHypervisor : IDisposable
{
    /// <summary>A short name for messages ("KVM").</summary>
    string Name { get; }

    /// <summary>The CPUID leaves the hypervisor can give a guest, before per-vCPU topology is applied.</summary>
    CpuidEntry[] GetSupportedCpuid();

    /// <summary>The in-kernel LAPIC emulates the TSC-deadline timer mode (offered in CPUID leaf 1 when true).</summary>
    bool HasTscDeadlineTimer { get; }

    IHypervisorVm CreateVm();
}

/// <summary>
/// One VM: guest memory slots, the interrupt controllers the hypervisor emulates, interrupt injection, doorbells that
/// complete in the hypervisor (ioeventfd) and vCPUs. Notifiers are Linux eventfds, as in cloud-hypervisor's
/// <c>Vm</c> trait: KVM and MSHV both take them.
/// </summary>
public interface IHypervisorVm : IDisposable
{
    /// <summary>Guest physical [gpa, gpa+size) is backed by host memory at <paramref name="hostAddress"/>, which the
    /// caller keeps mapped for the VM's lifetime.</summary>
    void SetMemoryRegion(uint slot, ulong gpa, ulong size, nint hostAddress, bool readOnly = false);

    /// <summary>x86: where the hypervisor may keep the 3-page real-mode TSS (Intel VMX needs it).</summary>
    void SetTssAddress(ulong address);

    /// <summary>x86: where the hypervisor may keep the identity page table for real mode (one page).</summary>
    void SetIdentityMapAddress(ulong address);

    /// <summary>Emulated PIC, IOAPIC and per-vCPU LAPICs. Must precede vCPU creation.</summary>
    void CreateIrqchip();

    /// <summary>An emulated i8254 PIT (with a dummy speaker port).</summary>
    void CreatePit();

    /// <summary>Drives an input (GSI) of the emulated interrupt controllers to a level.</summary>
    void SetIrqLine(uint gsi, bool level);

    /// <summary>Injects one message-signalled interrupt; false when the hypervisor refused it.</summary>
    bool SignalMsi(ulong address, uint data);

    /// <summary>A notifier owned by the VM (closed with it).</summary>
    EventFd CreateEventFd();

    /// <summary>A guest write of <paramref name="length"/> bytes to <paramref name="address"/> (a port when
    /// <paramref name="pio"/>) completes in the hypervisor and signals <paramref name="eventFd"/>.</summary>
    void RegisterIoEvent(EventFd eventFd, ulong address, uint length, bool pio);

    /// <summary>A signal on <paramref name="eventFd"/> raises <paramref name="gsi"/> (edge) without a trip through the VMM.</summary>
    void RegisterIrqfd(EventFd eventFd, uint gsi);

    /// <summary>
    /// Guest writes to ports [port, port+size) stop exiting; the hypervisor queues them and the VMM must replay them,
    /// in order, before it handles any exit (<see cref="IQueuedWrites"/>). Null (nothing registered) when the
    /// hypervisor cannot. <paramref name="vcpu"/> is a vCPU of this VM (KVM maps the queue through it).
    /// </summary>
    IQueuedWrites? EnableCoalescedPio(IVcpu vcpu, ushort port, uint size);

    IVcpu CreateVcpu(int id);
}

/// <summary>
/// One virtual CPU. <see cref="Run"/> and the state calls belong to the thread that runs it (after
/// <see cref="BindCurrentThread"/>); <see cref="Kick"/> may be called from any thread.
/// </summary>
public interface IVcpu : IDisposable
{
    int Id { get; }

    /// <summary>Enters the guest until the next exit (or a kick). The returned exit's buffers are valid until the next call.</summary>
    VmExit Run();

    /// <summary>Called once on the thread that will call <see cref="Run"/>, so that <see cref="Kick"/> can reach it.</summary>
    void BindCurrentThread();

    /// <summary>From any thread: makes the current or next <see cref="Run"/> return <see cref="VmExitKind.Interrupted"/>.</summary>
    void Kick();

    /// <summary>Withdraws a kick once it has been seen, so the next <see cref="Run"/> enters the guest again.</summary>
    void ClearKick();

    /// <summary>Per-vCPU CPUID. Must precede <see cref="SetMsrs"/> (the hypervisor derives which MSRs exist from it).</summary>
    void SetCpuid(ReadOnlySpan<CpuidEntry> entries);

    /// <summary>Sets MSRs in order; returns how many were set (the hypervisor stops at the first it rejects).</summary>
    int SetMsrs(ReadOnlySpan<(uint Index, ulong Value)> msrs);

    X86Registers GetRegisters();

    void SetRegisters(in X86Registers registers);

    X86SpecialRegisters GetSpecialRegisters();

    void SetSpecialRegisters(in X86SpecialRegisters registers);

    /// <summary>Sets the x87/SSE state: the given control words, everything else zero.</summary>
    void SetFpu(in X86FpuState fpu);

    /// <summary>The LAPIC's 1024-byte register page image.</summary>
    void GetLapic(Span<byte> state);

    void SetLapic(ReadOnlySpan<byte> state);

    /// <summary>A one-line register summary for diagnostics; never throws.</summary>
    string DescribeState();
}

/// <summary>
/// Writes the hypervisor completed without an exit and queued for the VMM (KVM's coalesced MMIO/PIO ring). Not
/// thread-safe: callers serialise <see cref="TryPeek"/>/<see cref="Advance"/> with one lock per VM.
/// </summary>
public interface IQueuedWrites
{
    /// <summary>True when nothing is queued (cheap: checked before every exit is handled).</summary>
    bool IsEmpty { get; }

    /// <summary>The oldest queued write, left queued until <see cref="Advance"/>; false when empty.</summary>
    bool TryPeek(out ulong address, out bool pio, Span<byte> data, out int length);

    /// <summary>Releases the write last returned by <see cref="TryPeek"/>.</summary>
    void Advance();
}

/// <summary>A hypervisor call failed; the message names the call and, where there is one, the error.</summary>
public class HypervisorException : Exception
{
    public HypervisorException(string message) : base(message)
    {
    }
}
