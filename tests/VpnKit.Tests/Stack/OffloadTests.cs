using System.Buffers.Binary;
using Kit.VpnKit;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>With segmentation offload the engine emits 64 KiB segments with partial checksums for the link to cut.</summary>
public sealed class OffloadTests
{
    private readonly CapturingSink _sink = new();
    private readonly RecordingFlows _flows = new();

    private (Gateway Gw, TcpSocket C, uint Iss) Open(int mtu, ushort guestMss, int window = 60000)
    {
        var gw = new Gateway(new GatewayOptions { Mtu = mtu, SegmentationOffload = TcpOffload.Ipv4, TcpBufferSize = 1 << 20 }, _sink, _flows);
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 0, 0, TcpFlags.Syn, options: new TcpOptions { Mss = guestMss, WindowScale = 7 }), 0);
        TcpSocket c = _flows.ConnectRequests[^1];
        c.CompleteConnect(true, 0);
        uint iss = BinaryPrimitives.ReadUInt32BigEndian(_sink.Take()[0].AsSpan(14 + 20 + 4));
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 1, iss + 1, TcpFlags.Ack, (ushort)(window >> 7)), 0);
        _sink.SegmentSizes.Clear();
        return (gw, c, iss);
    }

    [Fact]
    public void LargeSegmentsCarryPartialChecksumAndSegmentSize()
    {
        var (gw, c, _) = Open(1500, 1460, window: 1 << 20);
        c.Write(new byte[100_000], 1);
        List<byte[]> frames = _sink.Take();
        // One segment of the whole initial window (RFC 6928: 10 MSS), for the kernel to cut into ten.
        Assert.Single(frames);
        Assert.Equal(14 + 20 + 20 + 14600, frames[0].Length);
        Assert.Equal(1460, _sink.SegmentSizes[0]);
        // The checksum field holds the folded pseudo-header sum; adding the segment's own sum finishes it.
        Assert.True(Ipv4Packet.TryParse(frames[0].AsSpan(14), out Ipv4Packet ip) == Ipv4Error.None);
        ushort field = BinaryPrimitives.ReadUInt16BigEndian(ip.Payload.Slice(16));
        Assert.Equal((ushort)~Checksum.Finish(Checksum.PseudoHeader(ip.Source, ip.Destination, IpProtocol.Tcp, ip.Payload.Length)), field);
    }

    [Fact]
    public void JumboMtuKeepsSeveralSegmentsInFlight()
    {
        // MTU 65520: the MSS (65480) exceeds the largest IPv4 segment the engine builds, which must not stall it.
        var (gw, c, _) = Open(65520, 65480, window: 1 << 20);
        c.Write(new byte[300_000], 1);
        Assert.True(_sink.Take().Count >= 4);
        Assert.All(_sink.SegmentSizes, s => Assert.Equal(0, s));
    }

    [Fact]
    public void TrustedFramesSkipChecksumVerification()
    {
        var gw = new Gateway(new GatewayOptions { SegmentationOffload = TcpOffload.Ipv4 }, _sink, _flows);
        byte[] ping = G.Ping(G.Gateway, 1, 1, [1, 2, 3]);
        ping[14 + 20 + 2] ^= 0xFF; // Corrupt the ICMP checksum, as a partial-checksum frame would look.
        gw.Receive(ping, 0);
        Assert.Empty(_sink.Take());
        gw.Receive(ping, 0, checksumsTrusted: true);
        Assert.Single(_sink.Take());
    }
}
