using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Links;
using Kit.VpnKit.Tests.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>
/// Security review finding 12's switches, on a running server with a hand-built guest: <c>--block-metadata</c> resets
/// a connection to 169.254.169.254:80 (and drops UDP to it) without a host connect; the decision without the switch is
/// checked as a pure function (no test sends traffic off this machine).
/// <c>--no-host-loopback</c> makes 192.168.65.2 unreachable: a real listener on 127.0.0.1 sees no connection.
/// </summary>
public sealed class ReachabilityPolicyTests
{
    private static readonly uint Metadata = Ip4.Parse("169.254.169.254");

    private static (VpnKitServer Server, MemoryLink Link) Start(bool blockMetadata = false, bool hostLoopback = true)
    {
        var server = new VpnKitServer(new VpnKitServerOptions
        {
            DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)],
            BlockMetadata = blockMetadata,
            HostLoopback = hostLoopback,
        }, NullLoggerFactory.Instance);
        server.Start();
        var link = new MemoryLink();
        server.AddLink(link);
        return (server, link);
    }

    /// <summary>The gateway's first TCP answer to a SYN for <paramref name="dst"/>:<paramref name="port"/>, or null.</summary>
    private static Seg? AnswerToSyn(MemoryLink link, uint dst, ushort port, TimeSpan within)
    {
        link.Inject(G.Tcp(dst, 40100, port, 1000, 0, TcpFlags.Syn, options: new TcpOptions { Mss = 1460, WindowScale = -1 }));
        DateTime deadline = DateTime.UtcNow + within;
        while (deadline > DateTime.UtcNow && link.FromGateway.TryTake(out byte[]? f, deadline - DateTime.UtcNow))
        {
            if (G.DecodeTcp(f) is { } s && s.DstPort == 40100)
            {
                return s;
            }
        }
        return null;
    }

    [Fact]
    public void BlockMetadataResetsAConnectionTo169_254_169_254WithoutAHostConnect()
    {
        (VpnKitServer server, MemoryLink link) = Start(blockMetadata: true);
        using (server)
        {
            Seg? rst = AnswerToSyn(link, Metadata, 80, TimeSpan.FromSeconds(5));
            Assert.NotNull(rst);
            Assert.Equal(TcpFlags.Rst | TcpFlags.Ack, rst.Flags & (TcpFlags.Rst | TcpFlags.Ack | TcpFlags.Syn));
            Assert.Equal(1, server.PolicyBlocked);
            link.Inject(G.Udp(Metadata, 40101, 80, "x"u8.ToArray()));
            DateTime deadline = DateTime.UtcNow.AddSeconds(5);
            while (server.PolicyBlocked < 2 && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(10);
            }
            Assert.Equal(2, server.PolicyBlocked); // the datagram was dropped, counted
        }
    }

    /// <summary>
    /// The decision itself, both ways, without a running gateway: a test never sends traffic to 169.254.169.254 (or
    /// anywhere off this machine), so "without the switch the connect is attempted" is checked here, not on the wire.
    /// </summary>
    [Theory]
    [InlineData(true, true, "169.254.169.254", true)]
    [InlineData(false, true, "169.254.169.254", false)]
    [InlineData(true, true, "192.168.65.2", false)]
    [InlineData(true, false, "192.168.65.2", true)]
    [InlineData(false, false, "169.254.169.253", false)]
    public void ThePolicyRefusesExactlyWhatItsSwitchesSay(bool blockMetadata, bool hostLoopback, string ip, bool refused) =>
        Assert.Equal(refused, Kit.VpnKit.Nat.NatHost.Refuses(blockMetadata, hostLoopback, Ip4.Parse("192.168.65.2"), Ip4.Parse(ip)));

    [Fact]
    public void NoHostLoopbackMakesTheHostAliasUnreachable()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;

        (VpnKitServer on, MemoryLink onLink) = Start();
        using (on)
        {
            Seg? synAck = AnswerToSyn(onLink, G.Host, port, TimeSpan.FromSeconds(5));
            Assert.NotNull(synAck);
            Assert.Equal(TcpFlags.Syn | TcpFlags.Ack, synAck.Flags & (TcpFlags.Syn | TcpFlags.Ack | TcpFlags.Rst));
            listener.AcceptSocket().Dispose();
        }

        (VpnKitServer off, MemoryLink offLink) = Start(hostLoopback: false);
        using (off)
        {
            Seg? rst = AnswerToSyn(offLink, G.Host, port, TimeSpan.FromSeconds(5));
            Assert.NotNull(rst);
            Assert.Equal(TcpFlags.Rst | TcpFlags.Ack, rst.Flags & (TcpFlags.Rst | TcpFlags.Ack | TcpFlags.Syn));
            Thread.Sleep(200);
            Assert.False(listener.Pending(), "the host's 127.0.0.1 was reached");
            Assert.Equal(1, off.PolicyBlocked);
        }
    }
}
