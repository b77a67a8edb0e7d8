using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Boot;

/// <summary>
/// Fields of the x86 boot protocol's setup header (Documentation/arch/x86/boot.rst), read from or written to the header's
/// bytes as they sit from offset 0x1F1 on: a bzImage's own (<see cref="BzImage.SetupHeader"/>) or
/// <see cref="Synthetic"/> for a bare vmlinux. One place for the offsets, so the loader, the bzImage view and
/// boot_params agree.
/// </summary>
public static class SetupHeaderFields
{
    /// <summary>The header's first byte is at this offset of the bzImage and of boot_params.</summary>
    public const int Start = 0x1F1;

    private const int Version = 0x206 - Start, LoadFlags = 0x211 - Start, InitrdAddrMaxField = 0x22C - Start,
        KernelAlignmentField = 0x230 - Start, XLoadFlags = 0x236 - Start, CmdlineSizeField = 0x238 - Start,
        InitSizeField = 0x260 - Start;

    /// <summary>loadflags bit 1 (KASLR_FLAG): the loader randomized the kernel's base, so the kernel randomizes its
    /// memory regions too.</summary>
    private const byte KaslrFlag = 0x02;

    /// <summary>cmdline_size; 255 before protocol 2.06.</summary>
    public static uint CmdlineSize(ReadOnlySpan<byte> header) =>
        header.Length < CmdlineSizeField + 4 || BinaryPrimitives.ReadUInt16LittleEndian(header[Version..]) < 0x0206
            ? 255
            : BinaryPrimitives.ReadUInt32LittleEndian(header[CmdlineSizeField..]);

    /// <summary>initrd_addr_max; 0x37FFFFFF (the protocol's default) when the header is too short to hold it.</summary>
    public static uint InitrdAddrMax(ReadOnlySpan<byte> header) =>
        header.Length >= InitrdAddrMaxField + 4 ? BinaryPrimitives.ReadUInt32LittleEndian(header[InitrdAddrMaxField..]) : 0x37FF_FFFF;

    /// <summary>kernel_alignment; 2 MiB when the header is too short to hold it.</summary>
    public static uint KernelAlignment(ReadOnlySpan<byte> header) =>
        header.Length >= KernelAlignmentField + 4 ? BinaryPrimitives.ReadUInt32LittleEndian(header[KernelAlignmentField..]) : 0x20_0000;

    /// <summary>init_size (protocol 2.10+); 0 when the header is too short to hold it.</summary>
    public static uint InitSize(ReadOnlySpan<byte> header) =>
        header.Length >= InitSizeField + 4 ? BinaryPrimitives.ReadUInt32LittleEndian(header[InitSizeField..]) : 0;

    /// <summary>Sets KASLR_FLAG in loadflags.</summary>
    public static void SetKaslrFlag(Span<byte> header) => header[LoadFlags] |= KaslrFlag;

    /// <summary>
    /// The fields boot_params needs when the kernel came as a bare vmlinux (no bzImage header to copy): the
    /// signatures, boot protocol 2.15, LOADED_HIGH, XLF_KERNEL_64, initrd below 2 GiB and Linux's x86
    /// COMMAND_LINE_SIZE (2048).
    /// </summary>
    public static byte[] Synthetic()
    {
        var header = new byte[0x268 - Start];
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(0x1FE - Start), 0xAA55);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(0x202 - Start), 0x53726448); // "HdrS"
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(Version), 0x020F);
        header[LoadFlags] = 0x01; // LOADED_HIGH
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(InitrdAddrMaxField), 0x7FFF_FFFF);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(KernelAlignmentField), 0x20_0000);
        BinaryPrimitives.WriteUInt16LittleEndian(header.AsSpan(XLoadFlags), 0x0001); // XLF_KERNEL_64
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(CmdlineSizeField), 2048);
        return header;
    }
}

/// <summary>Reads of kernel and initrd files straight into their destination (guest memory, a table).</summary>
internal static class BootFile
{
    /// <summary>Fills <paramref name="destination"/> from <paramref name="offset"/>; IOException when the file ends
    /// first (it shrank after its length was taken).</summary>
    public static void ReadExactly(SafeFileHandle file, Span<byte> destination, long offset)
    {
        for (int done = 0; done < destination.Length;)
        {
            int n = RandomAccess.Read(file, destination[done..], offset + done);
            if (n <= 0)
            {
                throw new IOException("the file shrank while being read");
            }
            done += n;
        }
    }
}
