using System.Buffers.Binary;
using Kit.HyperKit.Memory;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Boot;

/// <summary>
/// Places an uncompressed kernel (<see cref="KernelElf"/>) in guest memory, from a file or from bytes, and decompresses
/// a bzImage's XZ payload into one. Segments are read from a file straight into guest memory: a managed copy of
/// tens of MiB would stay resident and count in the VMM's peak RSS.
/// </summary>
public static class KernelLoader
{
    /// <summary>Bigger than any x86-64 vmlinux a distribution ships (Debian's is ~63 MiB); bounds a hostile size.</summary>
    public const uint MaxUncompressedSize = 256U << 20;

    /// <summary>Copies each segment's file bytes from <paramref name="file"/> and zeroes the rest of its memory
    /// size. The layout must have been checked (<see cref="KernelElf.TryCheckLayout"/>). Throws IOException when the
    /// file shrank under us.</summary>
    public static void Load(KernelElf elf, SafeFileHandle file, GuestMemory memory, ulong physicalDelta = 0)
    {
        foreach (LoadSegment s in elf.Segments)
        {
            Span<byte> target = memory.GetSpan(s.PhysicalAddress + physicalDelta, (int)s.MemorySize);
            BootFile.ReadExactly(file, target[..(int)s.FileSize], (long)s.FileOffset);
            target[(int)s.FileSize..].Clear();
        }
    }

    /// <summary>As <see cref="Load(KernelElf, SafeFileHandle, GuestMemory)"/> from bytes already in memory
    /// (<see cref="KernelElf.TryParse"/> bounded every segment by their length).</summary>
    public static void Load(KernelElf elf, ReadOnlySpan<byte> file, GuestMemory memory, ulong physicalDelta = 0)
    {
        foreach (LoadSegment s in elf.Segments)
        {
            Span<byte> target = memory.GetSpan(s.PhysicalAddress + physicalDelta, (int)s.MemorySize);
            file.Slice((int)s.FileOffset, (int)s.FileSize).CopyTo(target);
            target[(int)s.FileSize..].Clear();
        }
    }

    /// <summary>
    /// Decides where a vmlinux goes: randomized (<see cref="KernelRelocator"/>) when its file carries a valid
    /// relocation table after the ELF, <paramref name="cmdline"/> lacks <c>nokaslr</c> and there is room below
    /// <paramref name="physicalLimit"/>; otherwise null with the reason (it then loads where it was linked).
    /// <paramref name="table"/> is the validated table, for <see cref="KernelRelocator.Apply"/> once loaded.
    /// </summary>
    public static KernelPlacement? PlanKaslr(KernelElf elf, SafeFileHandle? file, byte[]? bytes, string cmdline, uint alignment,
        ulong physicalLimit, out byte[] table, out string reason)
    {
        table = [];
        if (KernelRelocator.IsDisabled(cmdline))
        {
            reason = "nokaslr on the command line";
            return null;
        }
        if (elf.Segments.Min(s => s.PhysicalAddress) != KernelRelocator.LoadPhysicalAddress)
        {
            reason = "the kernel is not linked to load at 16 MiB";
            return null;
        }
        ulong length = bytes is not null ? (ulong)bytes.Length : (ulong)RandomAccess.GetLength(file!);
        ulong tableLength = length - elf.OwnLength;
        if (tableLength > KernelRelocator.MaxTableBytes)
        {
            reason = $"{tableLength} bytes after the ELF: too many for a relocation table";
            return null;
        }
        table = new byte[tableLength];
        if (bytes is not null)
        {
            bytes.AsSpan((int)elf.OwnLength).CopyTo(table);
        }
        else
        {
            BootFile.ReadExactly(file!, table, (long)elf.OwnLength);
        }
        if (!KernelRelocator.TryValidate(table, elf.Segments, out _, out reason))
        {
            return null;
        }
        Span<byte> random = stackalloc byte[16];
        Kvm.HostRandom.Fill(random);
        // kaslr.c sizes the virtual window by the larger of the decompressed blob and _end - _text.
        ulong imageSize = Math.Max(elf.End - KernelRelocator.LoadPhysicalAddress, length);
        if (!KernelRelocator.TryChoose(BinaryPrimitives.ReadUInt64LittleEndian(random), BinaryPrimitives.ReadUInt64LittleEndian(random[8..]),
                elf.End, imageSize, Math.Max(alignment, 0x20_0000U), physicalLimit, out KernelPlacement placement, out reason))
        {
            return null;
        }
        return placement;
    }

    /// <summary>
    /// The bzImage's kernel, decompressed: from the cache in <paramref name="cacheDirectory"/> when this exact image was
    /// decompressed before, otherwise decompressed now (XZ through liblzma) and stored for the next boot (no cache when
    /// the directory is null). A cached kernel comes as an open file the caller disposes, a fresh one as bytes.
    /// (null, null, null) means "boot the bzImage as it is": not XZ, no liblzma, or anything failed validation.
    /// </summary>
    public static (KernelElf? Elf, SafeFileHandle? File, byte[]? Bytes) Decompressed(BzImage image, string? cacheDirectory, ILogger logger)
    {
        if (!KernelPayload.TryGet(image, out KernelPayload payload, out string reason) || payload.Compression != KernelCompression.Xz)
        {
            BootLog.BzImagePath(logger, reason.Length > 0 ? reason : $"payload is {payload.Compression}, not XZ");
            return (null, null, null);
        }
        KernelCache? cache = cacheDirectory is null ? null : new KernelCache(cacheDirectory);
        string key = KernelCache.Key(image.File);
        if (cache is not null)
        {
            if (cache.TryOpen(key, payload.UncompressedSize, out SafeFileHandle? handle, out KernelElf? cached, out reason))
            {
                return (cached, handle, null);
            }
            BootLog.CacheMiss(logger, key, reason);
        }
        if (!TryDecompress(image, out byte[]? vmlinux, out KernelElf? elf, out reason))
        {
            BootLog.BzImagePath(logger, reason);
            return (null, null, null);
        }
        if (cache is not null && !cache.TryStore(key, vmlinux, out reason))
        {
            BootLog.CacheNotWritten(logger, reason);
        }
        return (elf, null, vmlinux);
    }

    /// <summary>Decompresses an XZ bzImage payload into a vmlinux and checks it is a loadable ELF. False with a
    /// reason for any other compression, a size outside (0, <see cref="MaxUncompressedSize"/>], bad data, a size
    /// that differs from the recorded one, or no liblzma.</summary>
    public static bool TryDecompress(BzImage image, out byte[]? vmlinux, out KernelElf? elf, out string reason)
    {
        vmlinux = null;
        elf = null;
        if (!KernelPayload.TryGet(image, out KernelPayload payload, out reason))
        {
            return false;
        }
        if (payload.Compression != KernelCompression.Xz)
        {
            reason = $"payload is {payload.Compression}, not XZ";
            return false;
        }
        if (payload.UncompressedSize == 0 || payload.UncompressedSize > MaxUncompressedSize)
        {
            reason = $"recorded uncompressed size {payload.UncompressedSize} is out of bounds";
            return false;
        }
        byte[] output = GC.AllocateUninitializedArray<byte>((int)payload.UncompressedSize);
        if (!LibLzma.TryDecode(payload.Compressed, output, out int written, out reason))
        {
            return false;
        }
        if (written != output.Length)
        {
            reason = $"XZ payload decoded to {written} bytes, not the recorded {output.Length}";
            return false;
        }
        if (!KernelElf.TryParse(output.AsSpan(0, Math.Min(output.Length, KernelElf.HeaderBytes)), (ulong)output.Length,
                out elf, out reason))
        {
            reason = $"decompressed payload: {reason}";
            return false;
        }
        vmlinux = output;
        return true;
    }
}
