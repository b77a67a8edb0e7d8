using System.Buffers.Binary;
using Kit.HyperKit.Boot;

namespace Kit.HyperKit.Tests;

public sealed class KernelRelocatorTests
{
    // One segment: link-physical 16 MiB, 64 KiB of file bytes (link virtual 0xffffffff81000000).
    private static readonly LoadSegment[] Segments = [new(0x1000, 0x1_0000, 0x100_0000, 0x2_0000)];

    private static int Entry(ulong offset) => unchecked((int)(uint)(0xFFFF_FFFF_8100_0000UL + offset));

    /// <summary>relocs.c's order: 0, 64-bit..., 0, inverse 32-bit..., 0, 32-bit...</summary>
    private static byte[] Table(int[] r64, int[] inv32, int[] r32)
    {
        int[] words = [0, .. r64, 0, .. inv32, 0, .. r32];
        var table = new byte[words.Length * 4];
        for (int i = 0; i < words.Length; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(table.AsSpan(i * 4), words[i]);
        }
        return table;
    }

    [Fact]
    public void Applies_each_group_with_its_width_and_sign()
    {
        byte[] table = Table([Entry(0x100)], [Entry(0x200)], [Entry(0x300), Entry(0x304)]);
        Assert.True(KernelRelocator.TryValidate(table, Segments, out KernelRelocator.Counts counts, out string reason), reason);
        Assert.Equal(new KernelRelocator.Counts(2, 1, 1), counts);

        var image = new byte[0x1_0000];
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(0x100), 0xFFFF_FFFF_8100_0040);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(0x200), 0x1000);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(0x300), 0x8100_0000);
        BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(0x304), 0x8100_0010);
        KernelRelocator.Apply(table, Segments, image, 0x100_0000, 0x600_0000);

        Assert.Equal(0xFFFF_FFFF_8700_0040, BinaryPrimitives.ReadUInt64LittleEndian(image.AsSpan(0x100)));
        Assert.Equal(unchecked(0x1000u - 0x600_0000u), BinaryPrimitives.ReadUInt32LittleEndian(image.AsSpan(0x200)));
        Assert.Equal(0x8700_0000u, BinaryPrimitives.ReadUInt32LittleEndian(image.AsSpan(0x300)));
        Assert.Equal(0x8700_0010u, BinaryPrimitives.ReadUInt32LittleEndian(image.AsSpan(0x304)));
        Assert.Equal(-1, image.AsSpan(0x308).IndexOfAnyExcept((byte)0)); // nothing else touched
    }

    [Fact]
    public void Zero_delta_changes_nothing()
    {
        byte[] table = Table([Entry(0x100)], [], [Entry(0x300)]);
        var image = new byte[0x1_0000];
        KernelRelocator.Apply(table, Segments, image, 0x100_0000, 0);
        Assert.Equal(-1, image.AsSpan().IndexOfAnyExcept((byte)0));
    }

    [Theory]
    [InlineData(0xFFFCUL, 8)]  // a 64-bit field crossing the end of the file bytes
    [InlineData(0x1_0000UL, 4)] // just past the file bytes (the zeroed tail is not relocatable)
    [InlineData(0x100_0000UL, 4)]
    public void Refuses_an_entry_outside_the_loaded_bytes(ulong offset, int width)
    {
        byte[] table = width == 8 ? Table([Entry(offset)], [], []) : Table([], [], [Entry(offset)]);
        Assert.False(KernelRelocator.TryValidate(table, Segments, out _, out string reason));
        Assert.Contains("outside", reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Refuses_an_entry_below_the_kernel_map_and_a_field_below_the_image()
    {
        Assert.False(KernelRelocator.TryValidate(Table([], [], [0x0100_0000]), Segments, out _, out _));
        Assert.False(KernelRelocator.TryValidate(Table([], [], [Entry(0) - 4]), Segments, out _, out _));
    }

    [Fact]
    public void Refuses_missing_terminators_and_odd_sizes()
    {
        byte[] whole = Table([Entry(0x100)], [Entry(0x200)], [Entry(0x300)]);
        Assert.True(KernelRelocator.TryValidate(whole, Segments, out _, out _));
        // Drop the leading zero: the 64-bit group has no terminator.
        Assert.False(KernelRelocator.TryValidate(whole.AsSpan(4), Segments, out _, out string reason));
        Assert.Contains("terminator", reason, StringComparison.Ordinal);
        Assert.False(KernelRelocator.TryValidate(whole.AsSpan(2), Segments, out _, out _));
        Assert.False(KernelRelocator.TryValidate([], Segments, out _, out _));
        byte[] noZeros = new byte[64];
        for (int i = 0; i < 16; i++)
        {
            BinaryPrimitives.WriteInt32LittleEndian(noZeros.AsSpan(i * 4), Entry(0x100));
        }
        Assert.False(KernelRelocator.TryValidate(noZeros, Segments, out _, out _));
    }

    [Fact]
    public void Chooses_aligned_bases_inside_the_bounds()
    {
        const ulong align = 0x20_0000, end = 0x500_0000, limit = 0x1F00_0000;
        var physical = new HashSet<ulong>();
        var random = new Random(1);
        for (int i = 0; i < 200; i++)
        {
            Assert.True(KernelRelocator.TryChoose((ulong)random.NextInt64(), (ulong)random.NextInt64(), end, end - 0x100_0000, align, limit,
                out KernelPlacement p, out string reason), reason);
            Assert.Equal(0UL, p.PhysicalBase % align);
            Assert.Equal(0UL, p.VirtualBase % align);
            Assert.InRange(p.PhysicalBase, 0x100_0000UL, 0x100_0000UL + (limit - end));
            Assert.True(end + p.PhysicalDelta <= limit);
            Assert.InRange(p.VirtualBase + (end - 0x100_0000), 0x100_0000UL, KernelRelocator.KernelImageSize);
            physical.Add(p.PhysicalBase);
        }
        Assert.True(physical.Count > 20);
        // The highest slots are reachable and exact.
        Assert.True(KernelRelocator.TryChoose(ulong.MaxValue, ulong.MaxValue, end, 0x400_0000, align, limit, out KernelPlacement top, out _));
        Assert.True(end + top.PhysicalDelta <= limit);
        Assert.False(KernelRelocator.TryChoose(1, 1, end, 0x400_0000, 0x30_0000, limit, out _, out _)); // not a power of two
        Assert.False(KernelRelocator.TryChoose(1, 1, end, 0x400_0000, align, end - 1, out _, out _));   // no room at all
    }

    [Theory]
    [InlineData("console=ttyS0 nokaslr", true)]
    [InlineData("nokaslr", true)]
    [InlineData("console=ttyS0 kaslr", false)]
    [InlineData("nokaslrx foo=nokaslr", false)]
    public void Nokaslr_is_a_whole_word(string cmdline, bool disabled) => Assert.Equal(disabled, KernelRelocator.IsDisabled(cmdline));
}
