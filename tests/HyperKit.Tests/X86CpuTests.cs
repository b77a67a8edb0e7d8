using Kit.HyperKit.Hypervisor;
using Kit.HyperKit.Vm;

namespace Kit.HyperKit.Tests;

/// <summary>The per-vCPU CPUID Kit derives from KVM_GET_SUPPORTED_CPUID (docs/hyperkit-boot.md, "the vCPU's CPUID").</summary>
public sealed class X86CpuTests
{
    private static CpuidEntry Leaf(uint function, uint index = 0, uint eax = 0, uint ebx = 0, uint ecx = 0, uint edx = 0) =>
        new() { Function = function, Index = index, Eax = eax, Ebx = ebx, Ecx = ecx, Edx = edx };

    // Leaf 0 vendor strings as EBX, EDX, ECX.
    private static CpuidEntry Amd => Leaf(0, eax: 0xD, ebx: 0x6874_7541, edx: 0x6974_6E65, ecx: 0x444D_4163);

    private static CpuidEntry Intel => Leaf(0, eax: 0x1F, ebx: 0x756E_6547, edx: 0x4965_6E69, ecx: 0x6C65_746E);

    private static CpuidEntry Find(CpuidEntry[] entries, uint function, uint index = 0) =>
        Array.Find(entries, e => e.Function == function && e.Index == index);

    /// <summary>An AMD-like supported list: brand-family leaf 1, power leaf 6, the extended leaves with host values.</summary>
    private static CpuidEntry[] AmdSupported() =>
    [
        Amd,
        Leaf(1, eax: 0x000F_06B1, ebx: 0x0000_0800, ecx: 0x0000_0001, edx: 0x0781_ABFD),
        Leaf(6, eax: 0),
        Leaf(0x8000_0001, ecx: 0x0000_0001, edx: 0x2BD3_FBFF),
        Leaf(0x8000_0008, eax: 0x3030, ecx: 0x0000_F0FF),
        Leaf(0x4000_0001, eax: 0x0100_7AFB),
    ];

    [Fact]
    public void TwoVcpusAreTwoCoresOfOnePackageOnAmd()
    {
        CpuidEntry[] cpu1 = X86Cpu.CpuidFor(AmdSupported(), id: 1, cpus: 2);
        CpuidEntry leaf1 = Find(cpu1, 1);
        Assert.Equal(1u, leaf1.Ebx >> 24);                 // initial APIC id
        Assert.Equal(2u, (leaf1.Ebx >> 16) & 0xFF);        // logical processors in the package
        Assert.Equal(0x800u, leaf1.Ebx & 0xFFFF);          // CLFLUSH size and brand index kept
        Assert.NotEqual(0u, leaf1.Edx & (1u << 28));       // HTT
        Assert.NotEqual(0u, leaf1.Ecx & (1u << 31));       // hypervisor
        Assert.NotEqual(0u, Find(cpu1, 0x8000_0001).Ecx & (1u << 1)); // CMP_LEGACY: the count is cores, not threads
        uint ecx = Find(cpu1, 0x8000_0008).Ecx;
        Assert.Equal(1u, ecx & 0xFF);                      // NC = cores - 1
        Assert.Equal(1u, (ecx >> 12) & 0xF);               // one APIC id bit for the core
        Assert.Equal(0x3030u, Find(cpu1, 0x8000_0008).Eax); // address sizes untouched
    }

    [Fact]
    public void OneVcpuHasNoLegacyCoreCount()
    {
        CpuidEntry[] cpu0 = X86Cpu.CpuidFor(AmdSupported(), id: 0, cpus: 1);
        Assert.Equal(0u, Find(cpu0, 0x8000_0001).Ecx & (1u << 1));
        Assert.Equal(0u, Find(cpu0, 0x8000_0008).Ecx & 0xF0FF);
        Assert.Equal(1u, (Find(cpu0, 1).Ebx >> 16) & 0xFF);
    }

    [Theory]
    [InlineData(3, 2)]
    [InlineData(4, 2)]
    [InlineData(5, 3)]
    [InlineData(64, 6)]
    public void CoreIdBitsCoverEveryVcpu(int cpus, uint bits)
    {
        CpuidEntry[] entries = X86Cpu.CpuidFor(AmdSupported(), id: cpus - 1, cpus: cpus);
        uint ecx = Find(entries, 0x8000_0008).Ecx;
        Assert.Equal(bits, (ecx >> 12) & 0xF);
        Assert.Equal((uint)cpus - 1, ecx & 0xFF);
        Assert.Equal((uint)cpus - 1, Find(entries, 1).Ebx >> 24);
    }

    [Fact]
    public void TscDeadlineIsOfferedOnlyWhenKvmEmulatesIt()
    {
        Assert.Equal(0u, Find(X86Cpu.CpuidFor(AmdSupported(), 0, 1), 1).Ecx & (1u << 24));
        Assert.NotEqual(0u, Find(X86Cpu.CpuidFor(AmdSupported(), 0, 1, tscDeadline: true), 1).Ecx & (1u << 24));
    }

    [Fact]
    public void TheLapicTimerIsAlwaysRunning()
    {
        Assert.Equal(1u << 2, Find(X86Cpu.CpuidFor(AmdSupported(), 0, 2), 6).Eax & (1u << 2));
    }

    [Fact]
    public void KvmParavirtualFeaturesPassThroughUnchanged()
    {
        Assert.Equal(0x0100_7AFBu, Find(X86Cpu.CpuidFor(AmdSupported(), 1, 2, tscDeadline: true), 0x4000_0001).Eax);
    }

    [Fact]
    public void IntelTopologyLeavesDescribeCoresWithOneThreadEach()
    {
        CpuidEntry[] supported =
        [
            Intel,
            Leaf(1, ebx: 0x0000_0800),
            Leaf(4, 0, eax: 0x0000_0121),   // level 1 data cache
            Leaf(4, 3, eax: 0x0000_0163),   // level 3 unified cache
            Leaf(0xB, 0, eax: 1, ebx: 2, ecx: 0x100),
            Leaf(0xB, 1, eax: 4, ebx: 16, ecx: 0x201),
            Leaf(0xB, 2, ecx: 2),
            Leaf(0x8000_0008, eax: 0x3027, ecx: 0),
        ];
        CpuidEntry[] cpu2 = X86Cpu.CpuidFor(supported, id: 2, cpus: 3);
        Assert.Equal(3u, Find(cpu2, 4, 0).Eax >> 26);             // 4 addressable core ids - 1
        Assert.Equal(0u, (Find(cpu2, 4, 0).Eax >> 14) & 0xFFF);  // L1 is per core
        Assert.Equal(3u, (Find(cpu2, 4, 3).Eax >> 14) & 0xFFF);  // L3 shared by the package
        Assert.Equal(0x121u, Find(cpu2, 4, 0).Eax & 0x3FFF);      // cache type and level kept
        CpuidEntry smt = Find(cpu2, 0xB, 0), core = Find(cpu2, 0xB, 1), end = Find(cpu2, 0xB, 2);
        Assert.Equal((0u, 1u, 0x100u, 2u), (smt.Eax, smt.Ebx, smt.Ecx, smt.Edx));
        Assert.Equal((2u, 3u, 0x201u, 2u), (core.Eax, core.Ebx, core.Ecx, core.Edx));
        Assert.Equal((0u, 0u, 2u, 2u), (end.Eax, end.Ebx, end.Ecx, end.Edx));
        Assert.Equal(0u, Find(cpu2, 0x8000_0008).Ecx);          // AMD core count stays out of an Intel CPU
    }

    [Fact]
    public void TheSupportedListIsNotModified()
    {
        CpuidEntry[] supported = AmdSupported();
        CpuidEntry[] before = (CpuidEntry[])supported.Clone();
        _ = X86Cpu.CpuidFor(supported, 1, 2, tscDeadline: true);
        Assert.Equal(before, supported);
    }

    [Fact]
    public void ExtendedApicLeafNamesOneThreadPerCoreOnOneNode()
    {
        // A host part with two threads per compute unit on node 1 of two (TOPOEXT leaf, AMD APM "CPUID Fn8000_001E").
        CpuidEntry[] supported = [.. AmdSupported(), Leaf(0x8000_001E, eax: 9, ebx: 0x0000_0104, ecx: 0x0000_0101)];
        CpuidEntry e = Find(X86Cpu.CpuidFor(supported, id: 1, cpus: 2), 0x8000_001E);
        Assert.Equal(1u, e.Eax);          // extended APIC id
        Assert.Equal(0x0001u, e.Ebx);     // compute unit 1, 1 thread in it
        Assert.Equal(0u, e.Ecx & 0x7FF);  // node 0, one node per package
    }
}
