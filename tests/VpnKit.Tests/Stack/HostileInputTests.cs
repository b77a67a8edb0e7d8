using CsCheck;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>Everything from a guest is hostile: no exception, bounded state, still answering afterwards.</summary>
public sealed class HostileInputTests
{
    [Fact]
    public void RandomAndMutatedFramesNeverThrowAndStateStaysBounded()
    {
        var sink = new CapturingSink();
        var flows = new RecordingFlows();
        var gw = new Gateway(new GatewayOptions { MaxTcpConnections = 64, MaxPendingConnects = 16 }, sink, flows);
        byte[][] seeds =
        [
            G.ArpRequest(G.Gateway),
            G.Ping(G.Gateway, 1, 1, new byte[32]),
            G.Udp(G.Remote, 1000, 53, new byte[40]),
            G.Tcp(G.Remote, 40000, 80, 1, 0, TcpFlags.Syn, options: new TcpOptions { Mss = 1460, WindowScale = 7 }),
            G.Tcp(G.Remote, 40000, 80, 2, 1, TcpFlags.Ack | TcpFlags.Psh, payload: new byte[100]),
            G.Dhcp(DhcpOption.Discover, 1, G.GuestMac),
        ];
        long now = 0;
        int frames = 0;
        // Mutations of valid frames (so checksums and headers are mostly right and deep paths run) plus pure noise.
        Gen.Select(Gen.Int[0, seeds.Length - 1], Gen.Int[0, 1500], Gen.Byte, Gen.Int[0, 200], Gen.Byte.Array[0, 200]).Sample((s, pos, val, cut, noise) =>
        {
            byte[] f = (byte[])seeds[s].Clone();
            f[pos % f.Length] = val;
            if (cut % 3 == 0)
            {
                f = f.AsSpan(0, Math.Max(0, f.Length - cut)).ToArray();
            }
            gw.Receive(f, now);
            gw.Receive(noise, now);
            // Let the NAT side answer some connects, both ways, so established paths are exercised too.
            foreach (TcpSocket c in flows.ConnectRequests)
            {
                c.CompleteConnect((c.GuestPort & 1) == 0, now);
            }
            flows.ConnectRequests.Clear();
            now += 7;
            gw.OnTimer(now);
            sink.Frames.Clear();
            frames += 2;
            Assert.True(gw.TcpConnectionCount <= 64);
            Assert.True(gw.PendingConnects <= 16);
        }, iter: 20_000, threads: 1);
        Assert.True(frames >= 40_000);
        gw.Receive(G.ArpRequest(G.Gateway), now);
        Assert.Single(sink.Take());
    }

    [Fact]
    public void SynFloodToClosedPortsIsRefusedAndBounded()
    {
        var sink = new CapturingSink();
        var flows = new RecordingFlows();
        var gw = new Gateway(new GatewayOptions(), sink, flows);
        for (int i = 0; i < 10_000; i++)
        {
            gw.Receive(G.Tcp(G.Remote, (ushort)(10_000 + i), (ushort)(1 + (i % 60_000)), (uint)i, 0, TcpFlags.Syn), i);
            foreach (TcpSocket c in flows.ConnectRequests)
            {
                c.CompleteConnect(false, i); // Closed ports: the host connect fails.
            }
            flows.ConnectRequests.Clear();
        }
        Assert.Equal(0, gw.TcpConnectionCount);
        Assert.Equal(10_000, sink.Frames.Count(f => G.DecodeTcp(f)?.Flags == (TcpFlags.Rst | TcpFlags.Ack)));
        sink.Frames.Clear();
        gw.Receive(G.Ping(G.Gateway, 1, 1, []), 10_001);
        Assert.Single(sink.Take());
    }

    [Fact]
    public void SynFloodToSlowPortsIsCappedByPendingLimit()
    {
        var sink = new CapturingSink();
        var flows = new RecordingFlows();
        var gw = new Gateway(new GatewayOptions { MaxPendingConnects = 256 }, sink, flows);
        for (int i = 0; i < 10_000; i++)
        {
            gw.Receive(G.Tcp(G.Remote, (ushort)(10_000 + i), 80, (uint)i, 0, TcpFlags.Syn), i);
        }
        // Connects never complete (a black-holed destination): at most 256 are in flight, the rest are dropped.
        Assert.Equal(256, flows.ConnectRequests.Count);
        Assert.Equal(256, gw.TcpConnectionCount);
        Assert.Equal(10_000 - 256, gw.Counters.TcpPendingFull);
        gw.Receive(G.ArpRequest(G.Gateway), 10_001);
        Assert.Single(sink.Take());
        // Finishing them frees the slots again.
        foreach (TcpSocket c in flows.ConnectRequests)
        {
            c.CompleteConnect(false, 10_002);
        }
        Assert.Equal(0, gw.TcpConnectionCount);
        Assert.Equal(0, gw.PendingConnects);
    }
}
