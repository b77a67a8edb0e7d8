using System.Runtime.InteropServices;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// ioctl numbers, exit reasons and capabilities from the x86-64 Linux UAPI (linux/kvm.h), as compiled on Debian 12
/// (reference/hyperkit.md Appendix A). The numbers encode direction and struct size, so a mismatch is caught by the
/// kernel as EINVAL/ENOTTY rather than silently corrupting memory.
/// </summary>
internal static class KvmIoctl
{
    public const nuint GetApiVersion = 0xAE00;
    public const nuint CreateVm = 0xAE01;
    public const nuint CheckExtension = 0xAE03;
    public const nuint GetVcpuMmapSize = 0xAE04;
    public const nuint GetSupportedCpuid = 0xC008AE05;
    public const nuint CreateVcpu = 0xAE41;
    public const nuint SetUserMemoryRegion = 0x4020AE46;
    public const nuint SetTssAddr = 0xAE47;
    public const nuint SetIdentityMapAddr = 0x4008AE48;
    public const nuint CreateIrqchip = 0xAE60;
    public const nuint IrqLine = 0x4008AE61;
    public const nuint Irqfd = 0x4020AE76;
    public const nuint CreatePit2 = 0x4040AE77;
    public const nuint Ioeventfd = 0x4040AE79;
    public const nuint SignalMsi = 0x4020AEA5;
    public const nuint Run = 0xAE80;
    public const nuint GetRegs = 0x8090AE81;
    public const nuint SetRegs = 0x4090AE82;
    public const nuint GetSregs = 0x8138AE83;
    public const nuint SetSregs = 0x4138AE84;
    public const nuint SetMsrs = 0x4008AE89;
    public const nuint GetFpu = 0x81A0AE8C;
    public const nuint SetFpu = 0x41A0AE8D;
    public const nuint GetLapic = 0x8400AE8E;
    public const nuint SetLapic = 0x4400AE8F;
    public const nuint SetCpuid2 = 0x4008AE90;
    public const nuint RegisterCoalescedMmio = 0x4010AE67;
}

internal static class KvmCap
{
    public const int Irqchip = 0;
    public const int UserMemory = 3;
    public const int SetTssAddr = 4;
    public const int ExtCpuid = 7;
    public const int NrMemslots = 10;
    public const int Irqfd = 32;
    public const int Pit2 = 33;
    public const int Ioeventfd = 36;
    public const int SignalMsi = 77;
    public const int ImmediateExit = 136;
    public const int CoalescedMmio = 15;
    public const int CoalescedPio = 162;
    public const int TscDeadlineTimer = 72;
}

/// <summary>struct kvm_coalesced_mmio_zone (16 bytes): a guest-physical or port range whose writes KVM queues.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvmCoalescedMmioZone
{
    public ulong Addr;
    public uint Size;
    public uint Pio;
}

/// <summary>kvm_run.exit_reason values we decode (linux/kvm.h KVM_EXIT_*).</summary>
public enum KvmExitReason : uint
{
    Unknown = 0,
    Exception = 1,
    Io = 2,
    Hypercall = 3,
    Debug = 4,
    Hlt = 5,
    Mmio = 6,
    IrqWindowOpen = 7,
    Shutdown = 8,
    FailEntry = 9,
    Intr = 10,
    SetTpr = 11,
    TprAccess = 12,
    Nmi = 16,
    InternalError = 17,
    SystemEvent = 24,
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmRegs
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type, Present, Dpl, Db, S, L, G, Avl, Unusable, Padding;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmDtable
{
    public ulong Base;
    public ushort Limit;
    public ushort Pad0, Pad1, Pad2;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmSregs
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public KvmDtable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
    public fixed ulong InterruptBitmap[4];
}

/// <summary>struct kvm_fpu (416 bytes); only the fields a boot needs are named.</summary>
[StructLayout(LayoutKind.Explicit, Size = 416)]
public struct KvmFpu
{
    [FieldOffset(128)] public ushort Fcw;
    [FieldOffset(130)] public ushort Fsw;
    [FieldOffset(132)] public byte Ftwx;
    [FieldOffset(408)] public uint Mxcsr;
}

[StructLayout(LayoutKind.Sequential)]
internal struct KvmUserspaceMemoryRegion
{
    public uint Slot;
    public uint Flags;
    public ulong GuestPhysAddr;
    public ulong MemorySize;
    public ulong UserspaceAddr;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmCpuidEntry2
{
    public uint Function, Index, Flags, Eax, Ebx, Ecx, Edx, Pad0, Pad1, Pad2;
}

[StructLayout(LayoutKind.Sequential)]
internal struct KvmMsrEntry
{
    public uint Index;
    public uint Reserved;
    public ulong Data;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmIrqfd
{
    public uint Fd;
    public uint Gsi;
    public uint Flags;
    public uint ResampleFd;
    public fixed byte Pad[16];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmIoeventfd
{
    public ulong Datamatch;
    public ulong Addr;
    public uint Len;
    public int Fd;
    public uint Flags;
    public fixed byte Pad[36];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmMsi
{
    public uint AddressLo;
    public uint AddressHi;
    public uint Data;
    public uint Flags;
    public uint DevId;
    public fixed byte Pad[12];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct KvmPitConfig
{
    public uint Flags;
    public fixed uint Pad[15];
}

[StructLayout(LayoutKind.Sequential)]
internal struct KvmIrqLevel
{
    public uint Irq;
    public uint Level;
}
