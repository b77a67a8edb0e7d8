using Kit.HyperKit.Devices.Virtio.Vsock;

namespace Kit.HyperKit.Tests;

public sealed class VsockWireTests
{
    [Fact]
    public void HeaderIs44LittleEndianBytesInSpecOrder()
    {
        var h = new VsockHeader(0x0102030405060708, 2, 0x11223344, 0x55667788, 0x99, 1, VsockOp.Rw, 3, 0x40000, 0x1234);
        byte[] bytes = new byte[VsockHeader.Size];
        h.Write(bytes);
        Assert.Equal(
            Convert.FromHexString("0807060504030201" + "0200000000000000" + "44332211" + "88776655" + "99000000" + "0100" + "0500"
                + "03000000" + "00000400" + "34120000"),
            bytes);
        Assert.True(VsockHeader.TryRead(bytes, out VsockHeader back));
        Assert.Equal(h, back);
        Assert.False(VsockHeader.TryRead(bytes.AsSpan(0, 43), out _));
    }

    [Fact]
    public void RingKeepsOrderAcrossTheWrap()
    {
        var ring = new ByteRing(8);
        Assert.Equal(6, ring.Write("abcdef"u8));
        byte[] out4 = new byte[4];
        Assert.Equal(4, ring.Read(out4));
        Assert.Equal("abcd"u8.ToArray(), out4);
        // Free space now wraps: 2 bytes at the end, 4 at the start.
        Assert.Equal(2, ring.WritableSegment.Length);
        Assert.Equal(6, ring.Write("ghijklmn"u8));
        Assert.Equal(0, ring.Free);
        Assert.Equal("efgh"u8.ToArray(), ring.ReadableSegment.ToArray());
        byte[] all = new byte[8];
        Assert.Equal(8, ring.Read(all));
        Assert.Equal("efghijkl"u8.ToArray(), all.AsSpan(0, 8).ToArray());
        Assert.Equal(0, ring.Count);
        // An empty ring does not move its start back: a producer may be filling the segment it was handed.
        Memory<byte> segment = ring.WritableSegment;
        "xy"u8.CopyTo(segment.Span);
        ring.Commit(2);
        Assert.Equal("xy"u8.ToArray(), ring.ReadableSegment.ToArray());
    }
}
