namespace Kit.HyperKit.Hypervisor;

/// <summary>Why <see cref="IVcpu.Run"/> returned, in terms any hypervisor can report.</summary>
public enum VmExitKind
{
    /// <summary>The run was cut short before or during guest execution (a kick, a signal): no exit to handle.</summary>
    Interrupted,
    /// <summary>The hypervisor exited for its own reasons and needs nothing from the VMM (KVM_EXIT_INTR): run again.</summary>
    Ignore,
    /// <summary>The guest read an I/O port the hypervisor does not emulate: fill <see cref="VmExit.Data"/>.</summary>
    IoIn,
    /// <summary>The guest wrote an I/O port the hypervisor does not emulate.</summary>
    IoOut,
    /// <summary>The guest read unbacked guest-physical memory: fill <see cref="VmExit.Data"/>.</summary>
    MmioRead,
    /// <summary>The guest wrote unbacked guest-physical memory.</summary>
    MmioWrite,
    /// <summary>HLT reached the VMM (only when no in-kernel LAPIC handles it).</summary>
    Hlt,
    /// <summary>The vCPU shut down: a triple fault on x86.</summary>
    Shutdown,
    /// <summary>The hypervisor reports a platform event (<see cref="VmExit.SystemEvent"/>).</summary>
    SystemEvent,
    /// <summary>The hypervisor could not handle something the guest did (an emulation failure, for one).</summary>
    InternalError,
    /// <summary>The hardware refused to enter the guest (bad vCPU state).</summary>
    FailEntry,
    /// <summary>An exit this seam does not know; <see cref="VmExit.Code"/> and <see cref="VmExit.Detail"/> name it.</summary>
    Unknown,
}

/// <summary>Platform events a hypervisor can report (KVM_SYSTEM_EVENT_*).</summary>
public enum SystemEventKind
{
    PowerOff,
    Reset,
    Crash,
    /// <summary>Anything else; <see cref="VmExit.Code"/> holds the hypervisor's own number.</summary>
    Other,
}

/// <summary>
/// One vCPU exit, hypervisor-neutral: a discriminated value (<see cref="Kind"/> says which fields mean something)
/// in the shape of cloud-hypervisor's <c>hypervisor::cpu::VmExit</c>. It is a ref struct because <see cref="Data"/>
/// points into the hypervisor's own exit buffer (KVM's kvm_run page): a read is answered by writing into it, and
/// nothing is allocated per exit. It is valid only until the next <see cref="IVcpu.Run"/> on the same vCPU.
/// </summary>
public readonly ref struct VmExit
{
    private VmExit(VmExitKind kind, ulong address = 0, Span<byte> data = default, int accessSize = 0, ulong code = 0,
        SystemEventKind systemEvent = SystemEventKind.Other, string? detail = null)
    {
        Kind = kind;
        Address = address;
        Data = data;
        AccessSize = accessSize;
        Code = code;
        SystemEvent = systemEvent;
        Detail = detail;
    }

    public VmExitKind Kind { get; }

    /// <summary>IoIn/IoOut: the port; MmioRead/MmioWrite: the guest-physical address.</summary>
    public ulong Address { get; }

    public ushort Port => (ushort)Address;

    /// <summary>
    /// IoIn/IoOut: <see cref="Data"/>.Length / <see cref="AccessSize"/> accesses of <see cref="AccessSize"/> bytes each (a
    /// REP INS/OUTS string); MmioRead/MmioWrite: the one access (1, 2, 4 or 8 bytes). Reads are answered in place.
    /// </summary>
    public Span<byte> Data { get; }

    /// <summary>IoIn/IoOut: bytes per port access (1, 2 or 4).</summary>
    public int AccessSize { get; }

    /// <summary>
    /// SystemEvent: the hypervisor's event number; InternalError: its suberror; FailEntry: the hardware reason;
    /// Unknown: the hypervisor's exit reason number.
    /// </summary>
    public ulong Code { get; }

    public SystemEventKind SystemEvent { get; }

    /// <summary>InternalError: the extra data words; Unknown: the exit reason's name. Null otherwise.</summary>
    public string? Detail { get; }

    public static VmExit Interrupted() => new(VmExitKind.Interrupted);

    public static VmExit Ignore() => new(VmExitKind.Ignore);

    public static VmExit IoIn(ushort port, Span<byte> data, int accessSize) => new(VmExitKind.IoIn, port, data, accessSize);

    public static VmExit IoOut(ushort port, Span<byte> data, int accessSize) => new(VmExitKind.IoOut, port, data, accessSize);

    public static VmExit MmioRead(ulong address, Span<byte> data) => new(VmExitKind.MmioRead, address, data);

    public static VmExit MmioWrite(ulong address, Span<byte> data) => new(VmExitKind.MmioWrite, address, data);

    public static VmExit Hlt() => new(VmExitKind.Hlt);

    public static VmExit Shutdown() => new(VmExitKind.Shutdown);

    public static VmExit PlatformEvent(SystemEventKind kind, ulong code) => new(VmExitKind.SystemEvent, code: code, systemEvent: kind);

    public static VmExit InternalError(ulong suberror, string detail) => new(VmExitKind.InternalError, code: suberror, detail: detail);

    public static VmExit FailEntry(ulong hardwareReason) => new(VmExitKind.FailEntry, code: hardwareReason);

    public static VmExit Unknown(ulong reason, string name) => new(VmExitKind.Unknown, code: reason, detail: name);
}
