using System.Buffers.Binary;
using Kit.HyperKit.Hypervisor;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Vm;

/// <summary>
/// x86 vCPU state as a real machine (or firmware) would leave it for the loaded code: CPUID with per-CPU topology,
/// boot MSRs, FPU defaults, LAPIC LINT0/LINT1 wiring, and the register sets for the 64-bit Linux entry or a flat
/// 32-bit protected-mode program (reference/hyperkit.md section 3.4).
/// </summary>
public static class X86Cpu
{
    // Guest physical layout for the 64-bit entry: MemoryLayout (the same low-memory spots Firecracker uses).
    private const ulong GdtAddress = MemoryLayout.GdtAddress, IdtAddress = MemoryLayout.IdtAddress,
        Pml4Address = MemoryLayout.Pml4Address, PdptAddress = MemoryLayout.PdptAddress, PdAddress = MemoryLayout.PdAddress,
        BootStack = MemoryLayout.BootStack;

    private const ulong Cr0Pe = 1, Cr0Et = 0x10, Cr0Ne = 0x20, Cr0Pg = 0x8000_0000, Cr4Pae = 0x20, EferLme = 0x100,
        EferLma = 0x400;

    /// <summary>
    /// Per-vCPU CPUID from the hypervisor's supported list (KVM_GET_SUPPORTED_CPUID): APIC ids, a topology of <paramref name="cpus"/> cores with one
    /// thread each in one package, the hypervisor bit, and the features KVM emulates but does not list as supported.
    /// </summary>
    /// <remarks>
    /// Topology: without core counts the guest takes HTT plus a logical count in leaf 1 for hyper-threads, so two vCPUs
    /// became SMT siblings of one core (Linux's detect_ht). AMD parts give the core count in leaf 0x8000_0008 ECX
    /// (NC and ApicIdCoreIdSize, AMD APM vol. 3, "CPUID Fn8000_0008") and CMP_LEGACY in 0x8000_0001 ECX; Intel parts
    /// in leaf 4 EAX[31:26] and the 0xB/0x1F levels (SDM vol. 2A, CPUID). TSC-deadline mode of the LAPIC timer
    /// (leaf 1 ECX[24]) is emulated by the in-kernel LAPIC whenever KVM_CAP_TSC_DEADLINE_TIMER is present, and KVM leaves
    /// it out of the supported list for that reason (Documentation/virt/kvm/api.rst, KVM_GET_SUPPORTED_CPUID); without
    /// it Linux calibrates the LAPIC timer against the PIT for 100 ms and, when a nested host preempts that window,
    /// disables the LAPIC timer altogether ("APIC timer disabled due to verification failure", measured). ARAT (leaf 6
    /// EAX[2]): the emulated LAPIC timer never stops in idle.
    /// </remarks>
    public static CpuidEntry[] CpuidFor(ReadOnlySpan<CpuidEntry> supported, int id, int cpus, bool tscDeadline = false)
    {
        cpus = Math.Max(cpus, 1);
        int coreBits = 0;
        while ((1 << coreBits) < cpus)
        {
            coreBits++;
        }
        bool amd = IsAmd(supported);
        var entries = supported.ToArray();
        for (int i = 0; i < entries.Length; i++)
        {
            ref CpuidEntry e = ref entries[i];
            switch (e.Function)
            {
                case 1:
                    e.Ebx = (e.Ebx & 0x0000_FFFF) | ((uint)id << 24) | ((uint)cpus << 16);
                    e.Edx |= 1u << 28;  // HTT: EBX[23:16] is meaningful
                    e.Ecx |= 1u << 31;  // running under a hypervisor
                    if (tscDeadline)
                    {
                        e.Ecx |= 1u << 24;
                    }
                    break;
                case 4 when !amd:
                {
                    // EAX[31:26]: addressable core ids in the package - 1; EAX[25:14]: logical CPUs sharing this cache
                    // - 1 (one thread per core, so only the package-wide level 3 is shared).
                    uint level = (e.Eax >> 5) & 7;
                    uint sharing = level >= 3 ? (1u << coreBits) - 1 : 0;
                    e.Eax = (e.Eax & 0x3FFF) | (sharing << 14) | (((1u << coreBits) - 1) << 26);
                    break;
                }
                case 6:
                    e.Eax |= 1u << 2;   // ARAT
                    break;
                case 0xB:
                case 0x1F:
                    // Level 0: SMT (one thread per core); level 1: core, spanning all vCPUs; then the end marker.
                    (e.Eax, e.Ebx, e.Ecx) = e.Index switch
                    {
                        0 => (0u, 1u, (1u << 8) | 0),
                        1 => ((uint)coreBits, (uint)cpus, (2u << 8) | 1),
                        _ => (0u, 0u, e.Index & 0xFF),
                    };
                    e.Edx = (uint)id;
                    break;
                case 0x8000_0001 when amd:
                    if (cpus > 1)
                    {
                        e.Ecx |= 1u << 1;   // CMP_LEGACY: the logical count in leaf 1 counts cores, not threads
                    }
                    break;
                case 0x8000_0008 when amd:
                    e.Ecx = (e.Ecx & ~0xF0FFu) | ((uint)coreBits << 12) | (uint)(cpus - 1);
                    break;
                case 0x8000_001E:
                    e.Eax = (uint)id;
                    e.Ebx = (e.Ebx & ~0xFFFFu) | ((uint)id & 0xFF);   // compute unit = core id, one thread per unit
                    e.Ecx &= ~0x7FFu;                                // node 0, one node per package
                    break;
            }
        }
        return entries;
    }

    /// <summary>AMD (and Hygon) parts describe cores in the extended leaves; the vendor string is in leaf 0 EBX-EDX-ECX.</summary>
    private static bool IsAmd(ReadOnlySpan<CpuidEntry> entries)
    {
        foreach (CpuidEntry e in entries)
        {
            if (e.Function == 0)
            {
                // "AuthenticAMD": EBX "Auth", EDX "enti", ECX "cAMD"; "HygonGenuine": EBX "Hygo".
                return (e.Ebx == 0x6874_7541 && e.Edx == 0x6974_6E65 && e.Ecx == 0x444D_4163) || e.Ebx == 0x6F67_7948;
            }
        }
        return false;
    }

    /// <summary>Boot MSRs (Firecracker/kvmtool set the same): syscall MSRs cleared, fast strings, write-back MTRR default.</summary>
    public static void SetBootMsrs(IVcpu vcpu)
    {
        ReadOnlySpan<(uint, ulong)> msrs =
        [
            (0x174, 0), (0x175, 0), (0x176, 0),       // SYSENTER_CS/ESP/EIP
            (0xC000_0081, 0), (0xC000_0082, 0), (0xC000_0083, 0), (0xC000_0084, 0), // STAR, LSTAR, CSTAR, SFMASK
            (0xC000_0102, 0),                          // KERNEL_GS_BASE
            (0x10, 0),                                 // TSC
            (0x1A0, 1),                                // IA32_MISC_ENABLE: fast strings
            (0x2FF, (1UL << 11) | 6),                  // MTRRdefType: enabled, write-back
        ];
        // KVM stops at the first MSR it does not know for this CPU model; the rest are optional niceties.
        _ = vcpu.SetMsrs(msrs);
    }

    public static void SetFpu(IVcpu vcpu)
    {
        vcpu.SetFpu(new X86FpuState(Fcw: 0x37F, Mxcsr: 0x1F80));
    }

    /// <summary>LINT0 = ExtINT (the 8259 path), LINT1 = NMI: without this the legacy timer path cannot work.</summary>
    public static void SetLint(IVcpu vcpu)
    {
        Span<byte> lapic = stackalloc byte[1024];
        vcpu.GetLapic(lapic);
        uint lint0 = BinaryPrimitives.ReadUInt32LittleEndian(lapic[0x350..]);
        uint lint1 = BinaryPrimitives.ReadUInt32LittleEndian(lapic[0x360..]);
        BinaryPrimitives.WriteUInt32LittleEndian(lapic[0x350..], (lint0 & ~0x700u) | (7u << 8));
        BinaryPrimitives.WriteUInt32LittleEndian(lapic[0x360..], (lint1 & ~0x700u) | (4u << 8));
        vcpu.SetLapic(lapic);
    }

    /// <summary>GDT (null, 64-bit code, data, TSS), an empty IDT, and identity page tables for the low 4 GiB.</summary>
    public static void WriteLongModeTables(GuestMemory memory)
    {
        Span<byte> gdt = memory.GetSpan(GdtAddress, 32);
        BinaryPrimitives.WriteUInt64LittleEndian(gdt, 0);
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[8..], 0x00AF_9B00_0000_FFFF);  // code: L=1, G=1, P, DPL0, exec/read
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[16..], 0x00CF_9300_0000_FFFF); // data: D/B=1, G=1, P, read/write
        BinaryPrimitives.WriteUInt64LittleEndian(gdt[24..], 0x008F_8B00_0000_FFFF); // TSS (busy), G=1
        memory.GetSpan(IdtAddress, 8).Clear();
        Span<byte> pml4 = memory.GetSpan(Pml4Address, 4096);
        pml4.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(pml4, PdptAddress | 0x3);
        Span<byte> pdpt = memory.GetSpan(PdptAddress, 4096);
        pdpt.Clear();
        for (int g = 0; g < 4; g++)
        {
            ulong pd = PdAddress + 4096UL * (ulong)g;
            BinaryPrimitives.WriteUInt64LittleEndian(pdpt[(8 * g)..], pd | 0x3);
            Span<byte> table = memory.GetSpan(pd, 4096);
            for (int i = 0; i < 512; i++)
            {
                ulong address = ((ulong)g << 30) | ((ulong)i << 21);
                BinaryPrimitives.WriteUInt64LittleEndian(table[(8 * i)..], address | 0x83); // present, RW, 2 MiB page
            }
        }
    }

    private static X86Segment Segment(ushort selector, byte type, bool code64, bool db, bool system = false) => new()
    {
        Base = 0,
        Limit = 0xFFFF_FFFF,
        Selector = selector,
        Type = type,
        Present = 1,
        Dpl = 0,
        Db = db ? (byte)1 : (byte)0,
        S = system ? (byte)0 : (byte)1,
        L = code64 ? (byte)1 : (byte)0,
        G = 1,
    };

    /// <summary>Long mode with paging on, flat segments from the GDT above: the 64-bit boot protocol's entry state.</summary>
    public static void EnterLongMode(IVcpu vcpu, ulong rip, ulong rsi)
    {
        X86SpecialRegisters s = vcpu.GetSpecialRegisters();
        s.Cs = Segment(0x08, 0xB, code64: true, db: false);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = Segment(0x10, 0x3, code64: false, db: true);
        s.Tr = Segment(0x18, 0xB, code64: false, db: false, system: true);
        s.Gdt = new X86DescriptorTable { Base = GdtAddress, Limit = 31 };
        s.Idt = new X86DescriptorTable { Base = IdtAddress, Limit = 7 };
        s.Cr0 = Cr0Pe | Cr0Et | Cr0Ne | Cr0Pg;
        s.Cr3 = Pml4Address;
        s.Cr4 = Cr4Pae;
        s.Efer = EferLme | EferLma;
        vcpu.SetSpecialRegisters(s);
        vcpu.SetRegisters(new X86Registers { Rflags = 2, Rip = rip, Rsi = rsi, Rsp = BootStack, Rbp = BootStack });
    }

    /// <summary>Flat 32-bit protected mode, paging off: for freestanding test programs (all 4 GiB addressable).</summary>
    public static void EnterProtectedMode32(IVcpu vcpu, ulong eip, ulong esp)
    {
        X86SpecialRegisters s = vcpu.GetSpecialRegisters();
        s.Cs = Segment(0x08, 0xB, code64: false, db: true);
        s.Ds = s.Es = s.Fs = s.Gs = s.Ss = Segment(0x10, 0x3, code64: false, db: true);
        s.Tr = Segment(0x18, 0xB, code64: false, db: false, system: true);
        s.Cr0 = Cr0Pe | Cr0Et | Cr0Ne;
        s.Cr4 = 0;
        s.Efer = 0;
        vcpu.SetSpecialRegisters(s);
        vcpu.SetRegisters(new X86Registers { Rflags = 2, Rip = eip, Rsp = esp });
    }
}
