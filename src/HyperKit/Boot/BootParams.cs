using System.Buffers.Binary;

namespace Kit.HyperKit.Boot;

/// <summary>An e820 map entry (type 1 RAM, 2 reserved, 3 ACPI reclaimable, 4 ACPI NVS).</summary>
public readonly record struct E820Entry(ulong Address, ulong Size, uint Type)
{
    public const uint Ram = 1, Reserved = 2, Acpi = 3;
}

/// <summary>
/// Builds the 4 KiB "zero page" (struct boot_params) for the 64-bit boot protocol: the image's setup header copied
/// in, then loader type, command line, initrd, e820 map and ACPI RSDP pointer (offsets in reference/hyperkit.md
/// Appendix B).
/// </summary>
public static class BootParams
{
    public const int Size = 4096;
    private const int AcpiRsdpAddr = 0x070, ExtRamdiskImage = 0x0C0, ExtRamdiskSize = 0x0C4, ExtCmdLinePtr = 0x0C8,
        E820Entries = 0x1E8, TypeOfLoader = 0x210, LoadFlags = 0x211, RamdiskImage = 0x218, RamdiskSize = 0x21C,
        HeapEndPtr = 0x224, CmdLinePtr = 0x228, VidMode = 0x1FA, E820Table = 0x2D0;
    public const int MaxE820 = 128;

    public static void Build(Span<byte> page, BzImage image, ulong cmdlineAddress, ulong initrdAddress, ulong initrdSize,
        ReadOnlySpan<E820Entry> e820, ulong rsdpAddress) =>
        Build(page, image.SetupHeader, cmdlineAddress, initrdAddress, initrdSize, e820, rsdpAddress);

    /// <param name="setupHeader">The setup header from offset 0x1F1: a bzImage's own, or
    /// <see cref="SetupHeaderFields.Synthetic"/> for a bare vmlinux.</param>
    public static void Build(Span<byte> page, ReadOnlySpan<byte> setupHeader, ulong cmdlineAddress, ulong initrdAddress,
        ulong initrdSize, ReadOnlySpan<E820Entry> e820, ulong rsdpAddress)
    {
        if (page.Length != Size || e820.Length > MaxE820 || setupHeader.Length > Size - 0x1F1)
        {
            throw new ArgumentException("boot_params is 4096 bytes with at most 128 e820 entries");
        }
        page.Clear();
        setupHeader.CopyTo(page[0x1F1..]);
        page[TypeOfLoader] = 0xFF; // "undefined" boot loader, as Firecracker and kvmtool report
        page[LoadFlags] = (byte)((page[LoadFlags] | 0x01 /* LOADED_HIGH */) & ~0x80 /* no heap: 64-bit entry */);
        BinaryPrimitives.WriteUInt16LittleEndian(page[HeapEndPtr..], 0);
        BinaryPrimitives.WriteUInt16LittleEndian(page[VidMode..], 0xFFFF); // "normal" video mode, no VGA here
        BinaryPrimitives.WriteUInt32LittleEndian(page[CmdLinePtr..], (uint)cmdlineAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(page[ExtCmdLinePtr..], (uint)(cmdlineAddress >> 32));
        BinaryPrimitives.WriteUInt32LittleEndian(page[RamdiskImage..], (uint)initrdAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(page[ExtRamdiskImage..], (uint)(initrdAddress >> 32));
        BinaryPrimitives.WriteUInt32LittleEndian(page[RamdiskSize..], (uint)initrdSize);
        BinaryPrimitives.WriteUInt32LittleEndian(page[ExtRamdiskSize..], (uint)(initrdSize >> 32));
        BinaryPrimitives.WriteUInt64LittleEndian(page[AcpiRsdpAddr..], rsdpAddress);
        page[E820Entries] = (byte)e820.Length;
        for (int i = 0; i < e820.Length; i++)
        {
            Span<byte> entry = page.Slice(E820Table + 20 * i, 20);
            BinaryPrimitives.WriteUInt64LittleEndian(entry, e820[i].Address);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], e820[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], e820[i].Type);
        }
    }
}
