using System.Runtime.InteropServices;
using Kit.HyperKit.Kvm;

namespace Kit.HyperKit.Tests;

/// <summary>The coalesced PIO/MMIO ring, with the test writing entries the way KVM does (virt/kvm/coalesced_mmio.c).</summary>
public sealed class CoalescedRingTests : IDisposable
{
    private const int Capacity = (4096 - 8) / 24;
    private readonly nint _page = Marshal.AllocHGlobal(4096);

    public CoalescedRingTests()
    {
        for (int i = 0; i < 4096; i += 8)
        {
            Marshal.WriteInt64(_page, i, 0);
        }
    }

    public void Dispose() => Marshal.FreeHGlobal(_page);

    private uint First => (uint)Marshal.ReadInt32(_page, 0);

    private void KvmAppend(ulong address, ReadOnlySpan<byte> data, bool pio)
    {
        int last = Marshal.ReadInt32(_page, 4);
        int entry = 8 + last * 24;
        Marshal.WriteInt64(_page, entry, (long)address);
        Marshal.WriteInt32(_page, entry + 8, data.Length);
        Marshal.WriteInt32(_page, entry + 12, pio ? 1 : 0);
        for (int i = 0; i < data.Length; i++)
        {
            Marshal.WriteByte(_page, entry + 16 + i, data[i]);
        }
        Marshal.WriteInt32(_page, 4, (last + 1) % Capacity);
    }

    [Fact]
    public void EntriesComeOutInOrderAndStayUntilAdvanced()
    {
        var ring = KvmCoalescedRing.Over(_page);
        Assert.True(ring.IsEmpty);
        KvmAppend(0xCF8, [0x00, 0x08, 0x00, 0x80], pio: true);
        KvmAppend(0xFEB0_0000, [0x12, 0x34], pio: false);
        Assert.False(ring.IsEmpty);

        Span<byte> data = stackalloc byte[8];
        Assert.True(ring.TryPeek(out ulong address, out bool pio, data, out int length));
        Assert.Equal((0xCF8UL, true, 4), (address, pio, length));
        Assert.Equal(0x8000_0800u, BitConverter.ToUInt32(data[..4]));
        // Peeking again without advancing sees the same entry: it is not released to KVM until applied.
        Assert.True(ring.TryPeek(out address, out _, data, out _));
        Assert.Equal(0xCF8UL, address);
        ring.Advance();

        Assert.True(ring.TryPeek(out address, out pio, data, out length));
        Assert.Equal((0xFEB0_0000UL, false, 2), (address, pio, length));
        ring.Advance();
        Assert.True(ring.IsEmpty);
        Assert.False(ring.TryPeek(out _, out _, data, out _));
    }

    [Fact]
    public void TheIndexWrapsAtTheRingCapacity()
    {
        var ring = KvmCoalescedRing.Over(_page);
        Span<byte> data = stackalloc byte[8];
        for (int i = 0; i < Capacity + 5; i++)
        {
            KvmAppend((ulong)i, [(byte)i], pio: true);
            Assert.True(ring.TryPeek(out ulong address, out _, data, out int length));
            Assert.Equal(((ulong)i, 1, (byte)i), (address, length, data[0]));
            ring.Advance();
        }
        Assert.Equal(5u, First);
        Assert.True(ring.IsEmpty);
    }

    [Fact]
    public void AHostileIndexOrLengthIsNotFollowed()
    {
        var ring = KvmCoalescedRing.Over(_page);
        Marshal.WriteInt32(_page, 0, Capacity + 100); // first out of range
        Marshal.WriteInt32(_page, 4, 3);
        Span<byte> data = stackalloc byte[8];
        Assert.False(ring.TryPeek(out _, out _, data, out _));

        Marshal.WriteInt32(_page, 0, 0);
        Marshal.WriteInt32(_page, 4, 0);
        KvmAppend(0x80, [1], pio: true);
        Marshal.WriteInt32(_page, 8 + 8, 1000); // len past data[8]
        Assert.True(ring.TryPeek(out _, out _, data, out int length));
        Assert.Equal(8, length);
    }
}
