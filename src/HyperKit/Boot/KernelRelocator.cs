using System.Buffers.Binary;

namespace Kit.HyperKit.Boot;

/// <summary>Where a randomized kernel goes: <see cref="PhysicalBase"/> is where the image that was linked to load at
/// <see cref="KernelRelocator.LoadPhysicalAddress"/> is placed in guest RAM; <see cref="VirtualBase"/> is kaslr.c's
/// virt_addr (the kernel then runs at __START_KERNEL_map + VirtualBase instead of 0xffffffff81000000).</summary>
public readonly record struct KernelPlacement(ulong PhysicalBase, ulong VirtualBase)
{
    public ulong PhysicalDelta => PhysicalBase - KernelRelocator.LoadPhysicalAddress;

    public ulong VirtualDelta => VirtualBase - KernelRelocator.LoadPhysicalAddress;
}

/// <summary>
/// KASLR done on the host, as the bzImage's decompressor does it for x86-64 (arch/x86/boot/compressed/misc.c
/// handle_relocations, kaslr.c find_random_virt_addr). With CONFIG_X86_NEED_RELOCS the build appends vmlinux.relocs
/// (arch/x86/tools/relocs.c emit_relocs) to the ELF before compressing it; read backwards from the blob's end it is:
/// 32-bit relocations up to a zero word, inverse 32-bit relocations up to a zero, 64-bit relocations up to a zero.
/// Each entry is the link-time virtual address of the field to patch, as a sign-extended 32-bit word. Fields get
/// +delta (32- and 64-bit) or -delta (inverse 32-bit), delta = virtual base - LOAD_PHYSICAL_ADDR; the field's
/// place in RAM is its link address - __START_KERNEL_map + the physical delta (segments sit at p_paddr + it).
/// The table is untrusted: <see cref="TryValidate"/> checks the whole table before <see cref="Apply"/> patches
/// anything, so a bad table leaves the kernel as loaded (it then boots where it was linked). Pure: no I/O.
/// </summary>
public static class KernelRelocator
{
    /// <summary>LOAD_PHYSICAL_ADDR, CONFIG_PHYSICAL_START rounded to the alignment: 16 MiB in every x86-64 distro
    /// kernel (KernelElf checks the image's first segment is there before this is used).</summary>
    public const ulong LoadPhysicalAddress = 0x100_0000;

    /// <summary>__START_KERNEL_map (arch/x86/include/asm/page_64_types.h).</summary>
    public const ulong StartKernelMap = 0xFFFF_FFFF_8000_0000;

    /// <summary>KERNEL_IMAGE_SIZE with RANDOMIZE_BASE: the kernel's virtual window above __START_KERNEL_map.</summary>
    public const ulong KernelImageSize = 1UL << 30;

    /// <summary>Bounds a hostile table (Debian 6.1's is ~0.2 MiB).</summary>
    public const int MaxTableBytes = 16 << 20;

    /// <summary>Counts of one table's three groups.</summary>
    public readonly record struct Counts(int Relocs32, int Inverse32, int Relocs64);

    /// <summary>
    /// Checks <paramref name="table"/> (the bytes after the ELF, <see cref="KernelElf.OwnLength"/> to the file's end)
    /// for the kernel whose PT_LOAD segments are <paramref name="segments"/>: a whole number of words, three groups
    /// each closed by a zero within the table, every entry a field lying wholly inside some segment's file bytes.
    /// Never throws.
    /// </summary>
    public static bool TryValidate(ReadOnlySpan<byte> table, IReadOnlyList<LoadSegment> segments, out Counts counts, out string reason)
    {
        counts = default;
        if (table.Length == 0)
        {
            reason = "no relocation table after the ELF (kernel built without CONFIG_X86_NEED_RELOCS?)";
            return false;
        }
        if (table.Length % 4 != 0 || table.Length > MaxTableBytes)
        {
            reason = $"relocation table of {table.Length} bytes is not a bounded whole number of 32-bit words";
            return false;
        }
        int position = table.Length / 4;
        Span<int> groupCounts = stackalloc int[3];
        for (int group = 0; group < 3; group++)
        {
            int width = group == 2 ? 8 : 4;
            while (true)
            {
                if (position == 0)
                {
                    reason = $"relocation group {group + 1} has no zero terminator";
                    return false;
                }
                position--;
                int word = BinaryPrimitives.ReadInt32LittleEndian(table[(position * 4)..]);
                if (word == 0)
                {
                    break;
                }
                if (!TryLinkPhysical(word, width, segments, out _))
                {
                    reason = $"relocation 0x{(uint)word:X8} (group {group + 1}) is outside the kernel's loaded bytes";
                    return false;
                }
                groupCounts[group]++;
            }
        }
        counts = new Counts(groupCounts[0], groupCounts[1], groupCounts[2]);
        reason = "";
        return true;
    }

    /// <summary>
    /// Patches the loaded kernel. <paramref name="image"/> is guest RAM from the placed image's first byte: index 0
    /// is link-physical address <paramref name="imageLinkBase"/> (the lowest segment's p_paddr). The table must
    /// have passed <see cref="TryValidate"/> for the same segments, and <paramref name="image"/> must reach the
    /// highest segment's file end (it does when it covers the segments as placed).
    /// </summary>
    public static void Apply(ReadOnlySpan<byte> table, IReadOnlyList<LoadSegment> segments, Span<byte> image, ulong imageLinkBase, ulong virtualDelta)
    {
        if (virtualDelta == 0)
        {
            return; // misc.c: "No relocation needed"
        }
        int position = table.Length / 4;
        for (int group = 0; group < 3; group++)
        {
            int width = group == 2 ? 8 : 4;
            while (true)
            {
                position--;
                int word = BinaryPrimitives.ReadInt32LittleEndian(table[(position * 4)..]);
                if (word == 0)
                {
                    break;
                }
                if (!TryLinkPhysical(word, width, segments, out ulong at) || at < imageLinkBase)
                {
                    throw new ArgumentException("relocation table was not validated for these segments");
                }
                Span<byte> field = image.Slice(checked((int)(at - imageLinkBase)), width);
                switch (group)
                {
                    case 0:
                        BinaryPrimitives.WriteUInt32LittleEndian(field, BinaryPrimitives.ReadUInt32LittleEndian(field) + (uint)virtualDelta);
                        break;
                    case 1:
                        BinaryPrimitives.WriteUInt32LittleEndian(field, BinaryPrimitives.ReadUInt32LittleEndian(field) - (uint)virtualDelta);
                        break;
                    default:
                        BinaryPrimitives.WriteUInt64LittleEndian(field, BinaryPrimitives.ReadUInt64LittleEndian(field) + virtualDelta);
                        break;
                }
            }
        }
    }

    /// <summary>
    /// Picks a placement from two random words: the physical base is LOAD_PHYSICAL_ADDR plus a whole number of
    /// <paramref name="alignment"/>s such that the image (from LOAD_PHYSICAL_ADDR to <paramref name="imageEnd"/>,
    /// the segments' link-physical end) still ends at or below <paramref name="physicalLimit"/>; the virtual base a
    /// slot of <paramref name="alignment"/> from LOAD_PHYSICAL_ADDR up to KERNEL_IMAGE_SIZE minus
    /// <paramref name="imageSize"/> (kaslr.c find_random_virt_addr). False when nothing but the linked place fits.
    /// </summary>
    public static bool TryChoose(ulong random1, ulong random2, ulong imageEnd, ulong imageSize, ulong alignment, ulong physicalLimit,
        out KernelPlacement placement, out string reason)
    {
        placement = new KernelPlacement(LoadPhysicalAddress, LoadPhysicalAddress);
        if (alignment < 0x20_0000 || alignment > KernelImageSize / 4 || (alignment & (alignment - 1)) != 0)
        {
            reason = $"kernel alignment 0x{alignment:X} is not a power of two between 2 MiB and 256 MiB";
            return false;
        }
        if (imageEnd <= LoadPhysicalAddress || imageEnd > physicalLimit || imageSize > KernelImageSize - LoadPhysicalAddress)
        {
            reason = "the kernel does not fit below the limit";
            return false;
        }
        ulong physicalSlots = (physicalLimit - imageEnd) / alignment + 1;
        ulong virtualSlots = (KernelImageSize - LoadPhysicalAddress - imageSize) / alignment + 1;
        if (physicalSlots == 1 && virtualSlots == 1)
        {
            reason = "no room to move the kernel";
            return false;
        }
        placement = new KernelPlacement(
            LoadPhysicalAddress + random1 % physicalSlots * alignment,
            LoadPhysicalAddress + random2 % virtualSlots * alignment);
        reason = "";
        return true;
    }

    /// <summary>Whether the kernel command line holds the word <c>nokaslr</c> (the kernel's own check is
    /// cmdline_find_option_bool: a whole space-separated word).</summary>
    public static bool IsDisabled(string cmdline)
    {
        foreach (string word in cmdline.Split([' ', '\t', '\n'], StringSplitOptions.RemoveEmptyEntries))
        {
            if (word == "nokaslr")
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The link-physical address of a relocation entry's field, when the whole field lies in a segment's
    /// file bytes. The entry is a kernel virtual address (sign-extended), so it is below __START_KERNEL_map only
    /// for garbage.</summary>
    private static bool TryLinkPhysical(int word, int width, IReadOnlyList<LoadSegment> segments, out ulong address)
    {
        address = unchecked((ulong)(long)word - StartKernelMap);
        if ((ulong)(long)word < StartKernelMap)
        {
            return false;
        }
        foreach (LoadSegment s in segments)
        {
            if (address >= s.PhysicalAddress && s.FileSize >= (ulong)width && address - s.PhysicalAddress <= s.FileSize - (ulong)width)
            {
                return true;
            }
        }
        return false;
    }
}
