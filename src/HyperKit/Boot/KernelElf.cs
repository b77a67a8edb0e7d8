using System.Buffers.Binary;

namespace Kit.HyperKit.Boot;

/// <summary>One PT_LOAD segment of a kernel ELF: <see cref="FileSize"/> bytes from <see cref="FileOffset"/> go to
/// guest-physical <see cref="PhysicalAddress"/>; the rest of <see cref="MemorySize"/> is zero.</summary>
public readonly record struct LoadSegment(ulong FileOffset, ulong FileSize, ulong PhysicalAddress, ulong MemorySize)
{
    public ulong End => PhysicalAddress + MemorySize;
}

/// <summary>
/// The parts of an uncompressed Linux kernel (vmlinux, ELF64 x86-64 ET_EXEC) a loader needs: the entry point
/// (startup_64's physical address, entered in 64-bit mode with RSI = boot_params, Documentation/arch/x86/boot.rst
/// "64-bit Boot Protocol") and the PT_LOAD segments, loaded at p_paddr. The file is untrusted: <see cref="TryParse"/>
/// never throws, reads only the first <see cref="HeaderBytes"/> bytes (the ELF header and program headers must lie
/// there) and bounds every field; <see cref="TryCheckLayout"/> then checks the segments against a machine's memory.
/// </summary>
public sealed class KernelElf
{
    /// <summary>How much of the file's head a caller passes to <see cref="TryParse"/> (at most).</summary>
    public const int HeaderBytes = 4096;

    /// <summary>More PT_LOAD segments than any vmlinux has (x86 has 4 or 5); bounds the work for hostile input.</summary>
    public const int MaxSegments = 16;

    private const int EhdrSize = 64, PhdrSize = 56;
    private const uint PtLoad = 1;

    private KernelElf(ulong entry, LoadSegment[] segments, ulong ownLength)
    {
        Entry = entry;
        Segments = segments;
        OwnLength = ownLength;
    }

    public ulong Entry { get; }

    /// <summary>Where the ELF itself ends in the file (its headers, segments and section header table): a
    /// decompressed bzImage payload carries the relocation table (vmlinux.relocs) from there to the file's end.</summary>
    public ulong OwnLength { get; }

    public IReadOnlyList<LoadSegment> Segments { get; }

    /// <summary>The highest guest-physical address any segment reaches (exclusive).</summary>
    public ulong End => Segments.Max(s => s.End);

    /// <summary>Whether the file at <paramref name="path"/> starts with the ELF magic (a bare vmlinux rather than a
    /// bzImage). Throws IOException when it can not be read.</summary>
    public static bool IsElfFile(string path)
    {
        using Microsoft.Win32.SafeHandles.SafeFileHandle handle = File.OpenHandle(path);
        Span<byte> magic = stackalloc byte[4];
        return RandomAccess.Read(handle, magic, 0) == 4 && HasMagic(magic);
    }

    /// <summary>True when the bytes start with the ELF magic (whatever follows).</summary>
    public static bool HasMagic(ReadOnlySpan<byte> head) =>
        head.Length >= 4 && head[0] == 0x7F && head[1] == (byte)'E' && head[2] == (byte)'L' && head[3] == (byte)'F';

    /// <param name="head">The file's first bytes (up to <see cref="HeaderBytes"/>).</param>
    /// <param name="fileLength">The whole file's length: every segment's file bytes must lie inside it.</param>
    public static bool TryParse(ReadOnlySpan<byte> head, ulong fileLength, out KernelElf? elf, out string reason)
    {
        elf = null;
        if (head.Length < EhdrSize || !HasMagic(head))
        {
            reason = "not an ELF file";
            return false;
        }
        // e_ident: ELFCLASS64, ELFDATA2LSB, EV_CURRENT; then e_type ET_EXEC (2), e_machine EM_X86_64 (62).
        if (head[4] != 2 || head[5] != 1 || head[6] != 1)
        {
            reason = "not a little-endian ELF64 file";
            return false;
        }
        if (BinaryPrimitives.ReadUInt16LittleEndian(head[16..]) != 2 || BinaryPrimitives.ReadUInt16LittleEndian(head[18..]) != 62)
        {
            reason = "not an x86-64 executable ELF (ET_EXEC, EM_X86_64)";
            return false;
        }
        ulong entry = BinaryPrimitives.ReadUInt64LittleEndian(head[24..]);
        ulong phoff = BinaryPrimitives.ReadUInt64LittleEndian(head[32..]);
        ushort phentsize = BinaryPrimitives.ReadUInt16LittleEndian(head[54..]);
        ushort phnum = BinaryPrimitives.ReadUInt16LittleEndian(head[56..]);
        if (phentsize != PhdrSize || phnum == 0 || phnum > 64)
        {
            reason = "bad program header table (e_phentsize/e_phnum)";
            return false;
        }
        ulong tableEnd = (ulong)phnum * PhdrSize;
        if (phoff > (ulong)head.Length || tableEnd > (ulong)head.Length - phoff)
        {
            reason = $"program headers are not within the first {head.Length} bytes";
            return false;
        }
        var segments = new List<LoadSegment>();
        for (int i = 0; i < phnum; i++)
        {
            ReadOnlySpan<byte> ph = head.Slice((int)phoff + i * PhdrSize, PhdrSize);
            if (BinaryPrimitives.ReadUInt32LittleEndian(ph) != PtLoad)
            {
                continue;
            }
            var s = new LoadSegment(
                FileOffset: BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]),
                FileSize: BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]),
                PhysicalAddress: BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]),
                MemorySize: BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]));
            if (s.FileSize > s.MemorySize)
            {
                reason = $"segment {i}: p_filesz is larger than p_memsz";
                return false;
            }
            if (s.FileOffset > fileLength || s.FileSize > fileLength - s.FileOffset)
            {
                reason = $"segment {i} runs past the end of the file (truncated?)";
                return false;
            }
            // 1 TiB bounds every address so End can not overflow; TryCheckLayout then holds it to the guest's RAM.
            if (s.PhysicalAddress >= 1UL << 40 || s.MemorySize >= 1UL << 40)
            {
                reason = $"segment {i} lies beyond any guest memory";
                return false;
            }
            if (segments.Count == MaxSegments)
            {
                reason = $"more than {MaxSegments} loadable segments";
                return false;
            }
            segments.Add(s);
        }
        if (segments.Count == 0)
        {
            reason = "no loadable segments";
            return false;
        }
        for (int i = 0; i < segments.Count; i++)
        {
            for (int j = i + 1; j < segments.Count; j++)
            {
                if (segments[i].PhysicalAddress < segments[j].End && segments[j].PhysicalAddress < segments[i].End)
                {
                    reason = "loadable segments overlap";
                    return false;
                }
            }
        }
        // The entry must be code this loader places (file bytes, not the zeroed tail).
        if (!segments.Exists(s => entry >= s.PhysicalAddress && entry < s.PhysicalAddress + s.FileSize))
        {
            reason = $"entry point 0x{entry:X} is not inside a loaded segment";
            return false;
        }
        // e_shoff/e_shentsize/e_shnum: the section header table is the last thing objcopy writes. A table that claims
        // to lie past the file's end counts as reaching it (then nothing follows the ELF).
        ulong ownLength = (ulong)EhdrSize;
        foreach (LoadSegment s in segments)
        {
            ownLength = Math.Max(ownLength, s.FileOffset + s.FileSize);
        }
        ulong shoff = BinaryPrimitives.ReadUInt64LittleEndian(head[40..]);
        ulong shBytes = (ulong)BinaryPrimitives.ReadUInt16LittleEndian(head[58..]) * BinaryPrimitives.ReadUInt16LittleEndian(head[60..]);
        ownLength = Math.Max(ownLength, phoff + tableEnd);
        if (shoff != 0 && shBytes != 0)
        {
            ownLength = shoff > fileLength || shBytes > fileLength - shoff ? fileLength : Math.Max(ownLength, shoff + shBytes);
        }
        elf = new KernelElf(entry, [.. segments], Math.Min(ownLength, fileLength));
        reason = "";
        return true;
    }

    /// <summary>Reads the head of an open file and parses it (see <see cref="TryParse"/>). Never throws for bad
    /// content; I/O errors are the caller's.</summary>
    public static bool TryRead(Microsoft.Win32.SafeHandles.SafeFileHandle file, out KernelElf? elf, out string reason)
    {
        Span<byte> head = stackalloc byte[HeaderBytes];
        long length = RandomAccess.GetLength(file);
        int got = 0;
        while (got < head.Length)
        {
            int n = RandomAccess.Read(file, head[got..], got);
            if (n <= 0)
            {
                break;
            }
            got += n;
        }
        return TryParse(head[..got], (ulong)length, out elf, out reason);
    }

    /// <summary>Checks every segment lies in [<paramref name="lowest"/>, <paramref name="memorySize"/>): the caller
    /// keeps its own structures (zero page, command line, page tables, ACPI) below <paramref name="lowest"/>.</summary>
    public bool TryCheckLayout(ulong lowest, ulong memorySize, out string reason)
    {
        foreach (LoadSegment s in Segments)
        {
            if (s.PhysicalAddress < lowest)
            {
                reason = $"segment at 0x{s.PhysicalAddress:X} would overwrite the loader's structures below 0x{lowest:X}";
                return false;
            }
            if (s.End > memorySize)
            {
                reason = $"the kernel needs at least {(s.End >> 20) + 1} MiB of guest memory";
                return false;
            }
            if (s.MemorySize > int.MaxValue)
            {
                reason = "segment larger than 2 GiB";
                return false;
            }
        }
        reason = "";
        return true;
    }
}
