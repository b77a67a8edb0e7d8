using Kit.HyperKit.Boot;
using Kit.HyperKit.Devices.Pci;

namespace Kit.HyperKit.Vm;

/// <summary>
/// Where everything goes in the guest's physical address space (Firecracker's arch/x86_64/layout.rs): one page of
/// constants, lowest address first. RAM starts at 0 and ends below the PCI hole, so one memory slot covers it.
/// </summary>
/// <remarks>
/// <code>
/// 0x0000_0500  GDT (null, code64, data, TSS)        0x0000_0520  IDT (empty)
/// 0x0000_7000  boot_params (the zero page)          0x0000_8FF0  boot stack (grows down)
/// 0x0000_9000  PML4, 0xA000 PDPT, 0xB000-0xEFFF four PDs: identity map of the low 4 GiB in 2 MiB pages
/// 0x0002_0000  kernel command line (below 64 KiB long)
/// 0x0009_FC00  end of low RAM in the e820 map (EBDA and the legacy hole reserved up to 1 MiB)
/// 0x000E_0000  ACPI tables (RSDP, XSDT, FADT, MADT, DSDT), 64 KiB
/// 0x0010_0000  high RAM; a bzImage's protected-mode kernel (its decompressor moves to 16 MiB)
/// 0x0100_0000  LOAD_PHYSICAL_ADDR: where a vmlinux is linked; KASLR places it at or above this
///   ...        the initrd: page-aligned at the top of RAM, below the kernel's initrd_addr_max
/// 0xC000_0000  end of RAM at most (3 GiB)
/// 0xD000_0000  PCI MMIO window: BARs allocated upwards by the PCI bus, up to 0xFE00_0000
/// 0xFEC0_0000  IOAPIC                                0xFEE0_0000  local APIC
/// 0xFFFB_C000  KVM identity map page; 0xFFFB_D000 KVM real-mode TSS (3 pages): the addresses Firecracker uses
/// </code>
/// </remarks>
public static class MemoryLayout
{
    public const ulong GdtAddress = 0x500;
    public const ulong IdtAddress = 0x520;

    /// <summary>boot_params, the "zero page" of the 64-bit boot protocol (its address goes to the entry in RSI).</summary>
    public const ulong ZeroPageAddress = 0x7000;

    public const ulong BootStack = 0x8FF0;

    /// <summary>Identity page tables for the 64-bit entry: PML4, PDPT, then four page directories (4 GiB).</summary>
    public const ulong Pml4Address = 0x9000, PdptAddress = 0xA000, PdAddress = 0xB000;

    public const ulong CmdlineAddress = 0x2_0000;

    /// <summary>The command line may not reach the next thing up (it must stay below 64 KiB anyway).</summary>
    public const int MaxCmdlineBytes = 0x1_0000;

    /// <summary>Low RAM ends where a PC's extended BIOS data area starts; the rest below 1 MiB is reserved.</summary>
    public const ulong LowRamEnd = 0x9_FC00;

    public const ulong AcpiAddress = 0xE_0000, AcpiSize = 0x1_0000;

    /// <summary>RAM above the legacy hole starts here.</summary>
    public const ulong HighRamStart = 0x10_0000;

    /// <summary>Where a bzImage's protected-mode kernel is copied (its 64-bit entry is 0x200 bytes in).</summary>
    public const ulong KernelAddress = HighRamStart;

    /// <summary>Where a vmlinux is linked to run (CONFIG_PHYSICAL_START) and where a bzImage's decompressor goes.</summary>
    public const ulong KernelLoadPhysicalAddress = KernelRelocator.LoadPhysicalAddress;

    /// <summary>Guest RAM ends at or below 3 GiB: everything lives below the 32-bit MMIO gap.</summary>
    public const ulong MaxMemory = 0xC000_0000;

    /// <summary>The PCI MMIO window the bus allocates BARs from (defined with the bus: <see cref="PciBus"/>).</summary>
    public const ulong PciMmioStart = PciBus.MmioWindowStart, PciMmioEnd = PciBus.MmioWindowEnd;

    public const ulong IoApicAddress = 0xFEC0_0000;
    public const ulong LocalApicAddress = 0xFEE0_0000;

    /// <summary>KVM's real-mode TSS (3 pages, Intel VMX), same address as Firecracker and kvmtool.</summary>
    public const ulong TssAddress = 0xFFFB_D000;

    /// <summary>KVM's real-mode identity page table: the page below the TSS.</summary>
    public const ulong IdentityMapAddress = TssAddress - 0x1000;
}

/// <summary>The I/O ports of the machine's legacy devices.</summary>
public static class PortLayout
{
    /// <summary>i8042 data and command ports (only the reset command is acted on).</summary>
    public const ushort I8042Data = 0x60, I8042Command = 0x64;

    /// <summary>POST / io_delay port: completed by an ioeventfd, so Linux's short delays cost no exit.</summary>
    public const ushort PostCode = 0x80;

    public const ushort Com1 = 0x3F8;

    /// <summary>The test exit port freestanding programs end a run through (when enabled).</summary>
    public const ushort DebugExit = 0x501;

    /// <summary>ACPI PM1a event (4 ports) and control (2 ports) blocks.</summary>
    public const ushort Pm1aEvent = 0x600, Pm1aControl = 0x604;

    /// <summary>PCI configuration mechanism #1 (0xCF8 address, 0xCFC data, 0xCF9 reset control in between).</summary>
    public const ushort PciConfigAddress = PciBus.ConfigAddressPort;
}
