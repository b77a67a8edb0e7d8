using Kit.HyperKit.Boot;
using Kit.HyperKit.Vm;

namespace Kit.HyperKit.Tests;

/// <summary>The guest physical layout (MemoryLayout): nothing overlaps, RAM stays below the PCI hole, and the e820
/// map and initrd placement follow from it.</summary>
public sealed class MemoryLayoutTests
{
    [Fact]
    public void LowMemoryRegionsAreOrderedAndDisjoint()
    {
        (ulong Start, ulong Length, string Name)[] regions =
        [
            (MemoryLayout.GdtAddress, 32, "GDT"),
            (MemoryLayout.IdtAddress, 8, "IDT"),
            (MemoryLayout.ZeroPageAddress, (ulong)BootParams.Size, "boot_params"),
            (MemoryLayout.BootStack - 0x800, 0x800, "boot stack"),
            (MemoryLayout.Pml4Address, 4096, "PML4"),
            (MemoryLayout.PdptAddress, 4096, "PDPT"),
            (MemoryLayout.PdAddress, 4 * 4096, "page directories"),
            (MemoryLayout.CmdlineAddress, (ulong)MemoryLayout.MaxCmdlineBytes, "command line"),
            (MemoryLayout.AcpiAddress, MemoryLayout.AcpiSize, "ACPI tables"),
            (MemoryLayout.KernelAddress, 1, "kernel"),
        ];
        for (int i = 1; i < regions.Length; i++)
        {
            Assert.True(regions[i - 1].Start + regions[i - 1].Length <= regions[i].Start,
                $"{regions[i - 1].Name} overlaps {regions[i].Name}");
        }
        Assert.True(MemoryLayout.CmdlineAddress + (ulong)MemoryLayout.MaxCmdlineBytes <= MemoryLayout.LowRamEnd);
        Assert.True(MemoryLayout.AcpiAddress >= MemoryLayout.LowRamEnd, "the ACPI tables must lie in the reserved hole");
        Assert.True(MemoryLayout.AcpiAddress + MemoryLayout.AcpiSize <= MemoryLayout.HighRamStart);
    }

    [Fact]
    public void RamEndsBelowThePciHoleAndTheHoleBelowTheInterruptControllers()
    {
        Assert.True(MemoryLayout.MaxMemory <= MemoryLayout.PciMmioStart);
        Assert.True(MemoryLayout.PciMmioStart < MemoryLayout.PciMmioEnd);
        Assert.True(MemoryLayout.PciMmioEnd <= MemoryLayout.IoApicAddress);
        Assert.True(MemoryLayout.IoApicAddress + 0x1000 <= MemoryLayout.LocalApicAddress);
        Assert.True(MemoryLayout.LocalApicAddress + 0x1000 <= MemoryLayout.IdentityMapAddress);
        Assert.Equal(MemoryLayout.TssAddress, MemoryLayout.IdentityMapAddress + 0x1000);
        Assert.True(MemoryLayout.TssAddress + 3 * 0x1000 <= 1UL << 32, "the TSS's 3 pages must fit below 4 GiB");
        Assert.True(MemoryLayout.KernelLoadPhysicalAddress > MemoryLayout.KernelAddress);
    }

    [Fact]
    public void ThePortsOfTheLegacyDevicesDoNotOverlap()
    {
        (int Start, int Length)[] ports =
        [
            (PortLayout.I8042Data, 1), (PortLayout.I8042Command, 1), (PortLayout.PostCode, 1), (PortLayout.Com1, 8),
            (PortLayout.DebugExit, 1), (PortLayout.Pm1aEvent, 4), (PortLayout.Pm1aControl, 2), (PortLayout.PciConfigAddress, 8),
        ];
        for (int i = 1; i < ports.Length; i++)
        {
            Assert.True(ports[i - 1].Start + ports[i - 1].Length <= ports[i].Start);
        }
        Assert.Equal(PortLayout.Pm1aEvent, AcpiTables.Pm1aEventPort);
        Assert.Equal(PortLayout.Pm1aControl, AcpiTables.Pm1aControlPort);
    }

    [Fact]
    public void TheE820MapCoversRamAroundTheLegacyHole()
    {
        const ulong Size = 512UL << 20;
        E820Entry[] map = LinuxLoader.E820Map(Size);

        Assert.Equal(
        [
            new E820Entry(0, 0x9_FC00, E820Entry.Ram),
            new E820Entry(0x9_FC00, 0x10_0000 - 0x9_FC00, E820Entry.Reserved),
            new E820Entry(0x10_0000, Size - 0x10_0000, E820Entry.Ram),
        ], map);
        Assert.Equal(Size, map[^1].Address + map[^1].Size);
    }

    [Fact]
    public void TheInitrdGoesPageAlignedAtTheTopOfRamBelowInitrdAddrMax()
    {
        byte[] header = SetupHeaderFields.Synthetic();
        ulong top = Math.Min(512UL << 20, (ulong)SetupHeaderFields.InitrdAddrMax(header) + 1);

        ulong? address = LinuxLoader.InitrdAddress(10_000_001, header, 512UL << 20);

        Assert.NotNull(address);
        Assert.Equal(0UL, address!.Value % 4096);
        Assert.True(address.Value + 10_000_001 <= top);
        Assert.True(top - (address.Value + 10_000_001) < 4096);
        Assert.Null(LinuxLoader.InitrdAddress(top + 1, header, 512UL << 20));
    }
}
