using System.Runtime.CompilerServices;

namespace Kit.HyperKit.Hypervisor;

// Hypervisor-neutral x86-64 vCPU state (cloud-hypervisor's arch::x86 StandardRegisters, SpecialRegisters, CpuIdEntry):
// each backend converts to and from its own structures.

/// <summary>One CPUID leaf/subleaf as the guest will see it.</summary>
public struct CpuidEntry
{
    /// <summary>The index (subleaf) is significant for this function (KVM_CPUID_FLAG_SIGNIFCANT_INDEX).</summary>
    public const uint SignificantIndex = 1;

    public uint Function, Index, Flags, Eax, Ebx, Ecx, Edx;
}

/// <summary>General-purpose registers, RIP and RFLAGS.</summary>
public struct X86Registers
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

/// <summary>A segment register with its hidden descriptor part.</summary>
public struct X86Segment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type, Present, Dpl, Db, S, L, G, Avl, Unusable;
}

/// <summary>GDTR or IDTR.</summary>
public struct X86DescriptorTable
{
    public ulong Base;
    public ushort Limit;
}

/// <summary>The interrupt bitmap of pending external interrupts (256 bits).</summary>
[InlineArray(4)]
public struct X86InterruptBitmap
{
    private ulong _word;
}

/// <summary>Segment, descriptor-table and control registers, EFER and the APIC base.</summary>
public struct X86SpecialRegisters
{
    public X86Segment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public X86DescriptorTable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
    public X86InterruptBitmap InterruptBitmap;
}

/// <summary>The x87 control word and MXCSR; the rest of the FPU/SSE state is set to zero.</summary>
public readonly record struct X86FpuState(ushort Fcw, uint Mxcsr);
