using System.Buffers.Binary;
using System.Text;
using Kit.HyperKit.Boot;

namespace Kit.HyperKit.Tests;

public sealed class KernelPayloadTests
{
    /// <summary>`xz --check=crc32 --x86 --lzma2=,dict=1MiB` (the kernel's xz_wrap options, smaller dictionary) of an
    /// 8 KiB x86-64 ELF: entry 0x1000000, one PT_LOAD of 0x1000 bytes at 0x1000000 from file offset 0x1000.</summary>
    private const string SmallXzElf = "/Td6WFoAAAFpIt42AgEEACEBEACLIW9J4B//AUBdAD+RRYRoPYmm2orMk+ZQTvSS6L+tVYW3pfAO3Gq/5WJXXcRqjxQSdc19aLJjMHixKdWxlmvu/++D9Am9qc/UNOOLWAhG8bSVo+uJYmzDWpbedyxb8E+2DasVzPP83udeXz+gksz6XSNuv8aqq9vrg6WzJqCUkTxIsIyiiSnHQ8rMAIWOz8Wd4KjDPICQbOWREOzf5Aw/3M/TWz15FAl4I8goq2GMEbrPyJp8cwnP5xgWFEwc2WE9smEfZmKMx/jWzEBm4i0AZhZZx/9vgyw7NSqaIdYmz4cf6cB1wT73OQzm5aMq26b29O2+ydXaI5zLG1BbCNLJTQgMl96Rs2IQD91O4KLi+FR4d5sRrneueeuHbmeyYoTurtLRwgOqvYLlGlLJ7mrbkDgVETPDRmsBil3t7vNRKwBrudAbagn3FX4AAFP6L9QAAdgCgEAAAAQiO9o+MA2LAgAAAAABWVo=";

    /// <summary>A bzImage (protocol 2.15, 2 setup sectors) whose payload, at payload_offset 0x10 of the
    /// protected-mode kernel, is <paramref name="payload"/> followed by the 4-byte size the build appends.</summary>
    internal static byte[] FakeBzImage(byte[] payload, uint uncompressedSize)
    {
        const int setup = 3 * 512, offset = 0x10;
        byte[] file = new byte[setup + offset + payload.Length + 4];
        file[0x1F1] = 2;
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(0x1FE), 0xAA55);
        file[0x200] = 0xEB;
        file[0x201] = 0x66;
        Encoding.ASCII.GetBytes("HdrS", file.AsSpan(0x202));
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(0x206), 0x020F);
        file[0x211] = 1;
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x22C), 0x7FFFFFFF);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(0x236), 1);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x238), 2047);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x248), offset);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x24C), (uint)payload.Length + 4);
        payload.CopyTo(file.AsSpan(setup + offset));
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(file.Length - 4), uncompressedSize);
        return file;
    }

    private static BzImage Parse(byte[] file)
    {
        Assert.True(BzImage.TryParse(file, out BzImage? image, out string reason), reason);
        return image!;
    }

    [Theory]
    [InlineData(new byte[] { 0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00, 0 }, KernelCompression.Xz)]
    [InlineData(new byte[] { 0x1F, 0x8B, 8 }, KernelCompression.Gzip)]
    [InlineData(new byte[] { 0x28, 0xB5, 0x2F, 0xFD }, KernelCompression.Zstd)]
    [InlineData(new byte[] { 0x02, 0x21, 0x4C, 0x18 }, KernelCompression.Lz4)]
    [InlineData(new byte[] { 0x42, 0x5A, 0x68 }, KernelCompression.Bzip2)]
    [InlineData(new byte[] { 0x89, 0x4C, 0x5A, 0x4F }, KernelCompression.Lzo)]
    [InlineData(new byte[] { 0x5D, 0x00, 0x00 }, KernelCompression.Lzma)]
    [InlineData(new byte[] { 0xFD, 0x37, 0x7A }, KernelCompression.Unknown)]
    [InlineData(new byte[0], KernelCompression.Unknown)]
    public void Detects_the_compressor_by_magic(byte[] head, KernelCompression expected) =>
        Assert.Equal(expected, KernelPayload.Detect(head));

    [Fact]
    public void Finds_the_payload_and_the_appended_size()
    {
        byte[] xz = Convert.FromBase64String(SmallXzElf);
        BzImage image = Parse(FakeBzImage(xz, 0x2000));
        Assert.True(KernelPayload.TryGet(image, out KernelPayload payload, out string reason), reason);
        Assert.Equal(KernelCompression.Xz, payload.Compression);
        Assert.Equal(0x2000u, payload.UncompressedSize);
        Assert.Equal(xz, payload.Compressed.ToArray());
    }

    [Theory]
    [InlineData(0x1000_0000u, 20u)]   // offset past the image
    [InlineData(0x10u, 0x1000_0000u)] // length past the image
    [InlineData(0xFFFF_FFF0u, 0x20u)] // offset + length wraps around
    [InlineData(0x10u, 3u)]           // too short to hold the appended size
    public void Refuses_payload_fields_outside_the_image(uint offset, uint length)
    {
        byte[] file = FakeBzImage(new byte[64], 100);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x248), offset);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x24C), length);
        Assert.False(KernelPayload.TryGet(Parse(file), out _, out string reason));
        Assert.Contains("outside the image", reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Decompresses_an_XZ_payload_into_a_loadable_ELF()
    {
        BzImage image = Parse(FakeBzImage(Convert.FromBase64String(SmallXzElf), 0x2000));
        Assert.True(KernelLoader.TryDecompress(image, out byte[]? vmlinux, out KernelElf? elf, out string reason), reason);
        Assert.Equal(0x2000, vmlinux!.Length);
        Assert.Equal(0x100_0000UL, elf!.Entry);
        Assert.Equal(new LoadSegment(0x1000, 0x1000, 0x100_0000, 0x1000), Assert.Single(elf.Segments));
        Assert.Equal((byte)(7 * 5), vmlinux[0x1005]);
    }

    [Theory]
    [InlineData("size-too-small", "XZ output larger")]
    [InlineData("size-too-large", "not the recorded")]
    [InlineData("size-zero", "out of bounds")]
    [InlineData("size-huge", "out of bounds")]
    [InlineData("corrupt", "XZ")]
    [InlineData("gzip", "not XZ")]
    public void Refuses_bad_payloads_without_throwing(string defect, string expected)
    {
        byte[] xz = Convert.FromBase64String(SmallXzElf);
        uint size = 0x2000;
        switch (defect)
        {
            case "size-too-small": size = 0x1000; break;
            case "size-too-large": size = 0x3000; break;
            case "size-zero": size = 0; break;
            case "size-huge": size = uint.MaxValue; break;
            case "corrupt": xz[100] ^= 0x55; xz[101] ^= 0x55; break;
            case "gzip": xz[0] = 0x1F; xz[1] = 0x8B; break;
        }
        BzImage image = Parse(FakeBzImage(xz, size));
        Assert.False(KernelLoader.TryDecompress(image, out byte[]? vmlinux, out KernelElf? elf, out string reason));
        Assert.Null(vmlinux);
        Assert.Null(elf);
        Assert.Contains(expected, reason, StringComparison.Ordinal);
    }
}
