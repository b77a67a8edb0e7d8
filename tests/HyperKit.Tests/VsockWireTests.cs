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
}
