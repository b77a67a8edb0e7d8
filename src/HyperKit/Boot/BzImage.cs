using System.Buffers.Binary;

namespace Kit.HyperKit.Boot;

/// <summary>
/// A parsed bzImage (Linux x86 boot protocol, Documentation/arch/x86/boot.rst): the setup header at file offset
/// 0x1F1 and the protected-mode kernel after the real-mode setup sectors. Only images usable through the 64-bit entry
/// are accepted (protocol 2.12 or later and XLF_KERNEL_64). Parsing never throws: it returns a reason.
/// </summary>
public sealed class BzImage
{
    private BzImage(byte[] file, int setupBytes)
    {
        File = file;
        SetupBytes = setupBytes;
    }

    public byte[] File { get; }

    /// <summary>Size of the boot sector plus real-mode setup code: (setup_sects + 1) * 512.</summary>
    public int SetupBytes { get; }

    public ReadOnlySpan<byte> ProtectedModeKernel => File.AsSpan(SetupBytes);

    /// <summary>The setup header as found in the image (0x1F1 up to the end of the header, per its jump offset).</summary>
    public ReadOnlySpan<byte> SetupHeader => File.AsSpan(0x1F1, Math.Min(SetupHeaderEnd, File.Length) - 0x1F1);

    private int SetupHeaderEnd => 0x202 + File[0x201]; // the 2-byte jump at 0x200 skips exactly the header

    public ushort Version => BinaryPrimitives.ReadUInt16LittleEndian(File.AsSpan(0x206));

    public uint InitrdAddrMax => SetupHeaderFields.InitrdAddrMax(File.AsSpan(SetupHeaderFields.Start));

    public uint CmdlineSize => SetupHeaderFields.CmdlineSize(File.AsSpan(SetupHeaderFields.Start));

    public uint InitSize => SetupHeaderFields.InitSize(File.AsSpan(SetupHeaderFields.Start));

    public static bool TryParse(byte[] file, out BzImage? image, out string reason)
    {
        image = null;
        if (file.Length < 0x264)
        {
            reason = "file is too small to be a bzImage";
            return false;
        }
        if (BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(0x1FE)) != 0xAA55)
        {
            reason = "no boot sector signature 0xAA55 at 0x1FE: not a Linux bzImage";
            return false;
        }
        if (BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(0x202)) != 0x53726448) // "HdrS"
        {
            reason = "no \"HdrS\" setup header: not a Linux bzImage";
            return false;
        }
        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(0x206));
        if (version < 0x020C)
        {
            reason = $"boot protocol {version >> 8}.{version & 0xFF} is older than 2.12 (no 64-bit entry)";
            return false;
        }
        if ((BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(0x236)) & 1) == 0)
        {
            reason = "kernel does not support the 64-bit entry (XLF_KERNEL_64 clear)";
            return false;
        }
        if ((file[0x211] & 1) == 0)
        {
            reason = "not a bzImage (LOADED_HIGH clear: zImage)";
            return false;
        }
        int setupSects = file[0x1F1] == 0 ? 4 : file[0x1F1];
        int setupBytes = (setupSects + 1) * 512;
        if (setupBytes >= file.Length || 0x202 + file[0x201] > setupBytes)
        {
            reason = "setup sectors run past the end of the file";
            return false;
        }
        image = new BzImage(file, setupBytes);
        reason = "";
        return true;
    }
}
