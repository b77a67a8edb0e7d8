using System.Buffers.Binary;

namespace Kit.HyperKit.Boot;

/// <summary>How a bzImage's payload (the compressed vmlinux) is packed, told by its magic bytes.</summary>
public enum KernelCompression
{
    Unknown,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4,
    Zstd,
}

/// <summary>
/// The compressed vmlinux inside a bzImage: payload_offset (setup header 0x248, from the start of the protected-mode
/// kernel) and payload_length (0x24C), boot protocol 2.08+ (Documentation/arch/x86/boot.rst). The build appends the
/// uncompressed size as the payload's last 4 bytes (scripts/Makefile.lib size_append), which bounds decompression.
/// A view over the image's bytes; <see cref="TryGet"/> bounds-checks and never throws.
/// </summary>
public readonly ref struct KernelPayload
{
    private KernelPayload(ReadOnlySpan<byte> bytes, KernelCompression compression, uint uncompressedSize)
    {
        Compressed = bytes;
        Compression = compression;
        UncompressedSize = uncompressedSize;
    }

    /// <summary>The compressed stream, without the 4-byte size the build appended.</summary>
    public ReadOnlySpan<byte> Compressed { get; }

    public KernelCompression Compression { get; }

    /// <summary>The size the build recorded (little-endian, last 4 bytes of the payload).</summary>
    public uint UncompressedSize { get; }

    public static bool TryGet(BzImage image, out KernelPayload payload, out string reason)
    {
        payload = default;
        ReadOnlySpan<byte> file = image.File;
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(file[0x248..]);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(file[0x24C..]);
        ReadOnlySpan<byte> kernel = image.ProtectedModeKernel;
        if (length < 16 || offset > (uint)kernel.Length || length > (uint)kernel.Length - offset)
        {
            reason = "payload_offset/payload_length point outside the image";
            return false;
        }
        ReadOnlySpan<byte> bytes = kernel.Slice((int)offset, (int)length);
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(bytes[^4..]);
        payload = new KernelPayload(bytes[..^4], Detect(bytes), size);
        reason = "";
        return true;
    }

    /// <summary>The compressors Linux's boot/compressed Makefile uses, by their stream magic.</summary>
    public static KernelCompression Detect(ReadOnlySpan<byte> b) => b switch
    {
        [0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, ..] => KernelCompression.Xz,
        [0x1F, 0x8B, ..] => KernelCompression.Gzip,
        [0x28, 0xB5, 0x2F, 0xFD, ..] => KernelCompression.Zstd,
        [0x02, 0x21, 0x4C, 0x18, ..] => KernelCompression.Lz4,
        [0x42, 0x5A, 0x68, ..] => KernelCompression.Bzip2,
        [0x89, 0x4C, 0x5A, 0x4F, ..] => KernelCompression.Lzo,
        [0x5D, 0x00, 0x00, ..] => KernelCompression.Lzma,
        _ => KernelCompression.Unknown,
    };
}
