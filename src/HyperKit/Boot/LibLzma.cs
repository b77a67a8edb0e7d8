using System.Runtime.InteropServices;

namespace Kit.HyperKit.Boot;

/// <summary>
/// XZ decoding through the system's liblzma (liblzma.so.5: every Debian system has it, dpkg links it), for the
/// kernel payload. One call, lzma_stream_buffer_decode (lzma/container.h): buffer to buffer, bounded by a memory
/// limit and the output buffer's size. Blittable arguments and ref-byte buffers only (no unsafe, AOT-friendly).
/// </summary>
internal static partial class LibLzma
{
    /// <summary>liblzma's decoder memory: the kernel's XZ uses a 32 MiB dictionary (scripts/xz_wrap.sh).</summary>
    public const ulong MemoryLimit = 128UL << 20;

    private const int LzmaOk = 0, LzmaStreamEnd = 1, LzmaMemlimitError = 6, LzmaFormatError = 7, LzmaDataError = 9,
        LzmaBufError = 10;

    [LibraryImport("liblzma.so.5", EntryPoint = "lzma_stream_buffer_decode")]
    private static partial int StreamBufferDecode(ref ulong memlimit, uint flags, nint allocator, ref byte input,
        ref nuint inPos, nuint inSize, ref byte output, ref nuint outPos, nuint outSize);

    /// <summary>Decodes one XZ stream from <paramref name="input"/> into <paramref name="output"/>. False with a
    /// reason when the data is bad, the output does not fit, or liblzma can not be loaded.</summary>
    public static bool TryDecode(ReadOnlySpan<byte> input, Span<byte> output, out int written, out string reason)
    {
        written = 0;
        if (input.IsEmpty || output.IsEmpty)
        {
            reason = "empty buffer";
            return false;
        }
        ulong memlimit = MemoryLimit;
        nuint inPos = 0, outPos = 0;
        int rc;
        try
        {
            rc = StreamBufferDecode(ref memlimit, 0, 0, ref MemoryMarshal.GetReference(input), ref inPos, (nuint)input.Length,
                ref MemoryMarshal.GetReference(output), ref outPos, (nuint)output.Length);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            reason = $"liblzma is not available: {e.Message}";
            return false;
        }
        written = (int)outPos;
        reason = rc switch
        {
            LzmaOk or LzmaStreamEnd => "",
            LzmaMemlimitError => "XZ stream needs more than the memory limit",
            LzmaFormatError => "not an XZ stream",
            LzmaDataError => "corrupt XZ data",
            LzmaBufError => "XZ output larger than expected",
            _ => $"liblzma error {rc}",
        };
        return rc is LzmaOk or LzmaStreamEnd;
    }
}
