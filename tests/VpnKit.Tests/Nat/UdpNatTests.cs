using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Tests.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Nat;

public sealed class UdpNatTests
{
    /// <summary>A guest spraying 5,000 source ports cannot hold more than the cap of host sockets.</summary>
    [Fact]
    public void FlowTableIsCappedUnderASourcePortSpray()
    {
        var gate = new EngineGate();
        gate.Engine = new Gateway(new GatewayOptions(), new CapturingSink(), new RecordingFlows());
        using var sink = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        ushort port = (ushort)((IPEndPoint)sink.Client.LocalEndPoint!).Port;
        using var nat = new UdpNat(gate, ip => ip == G.Host ? 0x7F000001 : ip, ip => ip, NullLogger.Instance, maxFlows: 256);
        int max = 0;
        for (int i = 0; i < 5000; i++)
        {
            lock (gate.Sync)
            {
                nat.Send(new UdpFlow(G.Guest, (ushort)(1024 + i), G.Host, port), [1, 2, 3]);
            }
            max = Math.Max(max, nat.FlowCount);
        }
        Assert.True(max <= 256, $"{max} flows");
        Assert.True(nat.FlowCount >= 192);
        // Datagrams really went out through the host sockets.
        sink.Client.ReceiveTimeout = 5000;
        IPEndPoint? from = null;
        Assert.Equal(new byte[] { 1, 2, 3 }, sink.Receive(ref from));
    }

    [Fact]
    public void RepliesComeBackToTheGuestFromTheHostAlias()
    {
        var gate = new EngineGate();
        var frames = new CapturingSink();
        gate.Engine = new Gateway(new GatewayOptions(), frames, new RecordingFlows());
        lock (gate.Sync)
        {
            gate.Engine.Receive(G.ArpRequest(G.Gateway), 0); // Learn the guest's MAC.
            frames.Take();
        }
        using var echo = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        ushort port = (ushort)((IPEndPoint)echo.Client.LocalEndPoint!).Port;
        using var nat = new UdpNat(gate, ip => ip == G.Host ? 0x7F000001 : ip, ip => (ip >> 24) == 127 ? G.Host : ip, NullLogger.Instance);
        lock (gate.Sync)
        {
            nat.Send(new UdpFlow(G.Guest, 5555, G.Host, port), "ping"u8);
        }
        echo.Client.ReceiveTimeout = 5000;
        IPEndPoint? from = null;
        byte[] got = echo.Receive(ref from);
        echo.Send("pong"u8.ToArray(), from!);
        for (int i = 0; i < 200; i++)
        {
            lock (gate.Sync)
            {
                if (frames.Frames.Count > 0)
                {
                    break;
                }
            }
            Thread.Sleep(10);
        }
        byte[] frame;
        lock (gate.Sync)
        {
            frame = Assert.Single(frames.Take());
        }
        Assert.Equal("ping", System.Text.Encoding.ASCII.GetString(got));
        var udp = PacketDotNet.Packet.ParsePacket(PacketDotNet.LinkLayers.Ethernet, frame).Extract<PacketDotNet.UdpPacket>();
        Assert.Equal("192.168.65.2", ((PacketDotNet.IPv4Packet)udp.ParentPacket).SourceAddress.ToString());
        Assert.Equal(port, udp.SourcePort);
        Assert.Equal(5555, udp.DestinationPort);
        Assert.Equal("pong", System.Text.Encoding.ASCII.GetString(udp.PayloadData));
    }

    private static readonly UInt128 Host6 = Ip6.Parse("fd00:6b69:7400::2");
    private static readonly UInt128 Guest6 = Ip6.Parse("fd00:6b69:7400::1234");

    /// <summary>A gateway that knows the guest's MAC for both families, and a NAT that maps the host alias as NatHost does.</summary>
    private static (EngineGate Gate, CapturingSink Frames, UdpNat Nat) Setup()
    {
        var gate = new EngineGate();
        var frames = new CapturingSink();
        gate.Engine = new Gateway(new GatewayOptions(), frames, new RecordingFlows());
        // Any packet teaches the gateway its sender's MAC: ARP for IPv4, an echo to the gateway for IPv6 (checksums
        // vouched for by the "link", as a TAP with offload does).
        byte[] echo6 = new byte[14 + 40 + 8];
        EthernetFrame.Write(echo6, G.GatewayMac, G.GuestMac, EtherType.Ipv6);
        Ipv6Packet.Write(echo6.AsSpan(14), 8, Ipv6ExtensionChain.Icmpv6, 64, Guest6, Ip6.Parse("fd00:6b69:7400::1"));
        echo6[54] = Icmpv6Type.EchoRequest;
        lock (gate.Sync)
        {
            gate.Engine.Receive(G.ArpRequest(G.Gateway), 0);
            gate.Engine.Receive(echo6, 0, checksumsTrusted: true);
            frames.Take();
        }
        var nat = new UdpNat(gate, ip => ip == G.Host ? 0x7F000001 : ip, ip => (ip >> 24) == 127 ? G.Host : ip, NullLogger.Instance)
        {
            TranslateIn6 = ip => ip == UInt128.One ? Host6 : ip,
        };
        return (gate, frames, nat);
    }

    /// <summary>A port nothing listens on at <paramref name="address"/> now (bound, then closed).</summary>
    private static ushort ClosedPort(IPAddress address)
    {
        using var s = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        s.Bind(new IPEndPoint(address, 0));
        return (ushort)((IPEndPoint)s.LocalEndPoint!).Port;
    }

    private static byte[] NextFrame(EngineGate gate, CapturingSink frames)
    {
        for (int i = 0; i < 500; i++)
        {
            lock (gate.Sync)
            {
                if (frames.Frames.Count > 0)
                {
                    return frames.Take()[0];
                }
            }
            Thread.Sleep(10);
        }
        Assert.Fail("no frame for the guest in 5 s");
        return [];
    }

    /// <summary>
    /// The host refuses a datagram to the host alias (nothing on 127.0.0.1 at that port): the guest gets ICMP port
    /// unreachable (type 3 code 3) from the host alias, quoting an IPv4 header and UDP header its kernel can match to
    /// the socket (guest address and port to the host alias and port) and the refused payload.
    /// </summary>
    [Fact]
    public void ARefusedDatagramComesBackAsPortUnreachableQuotingTheFlow()
    {
        (EngineGate gate, CapturingSink frames, UdpNat nat) = Setup();
        using UdpNat _ = nat;
        ushort port = ClosedPort(IPAddress.Loopback);
        lock (gate.Sync)
        {
            nat.Send(new UdpFlow(G.Guest, 4444, G.Host, port), "knock"u8);
        }
        byte[] f = NextFrame(gate, frames);
        Assert.Equal(0x0800, (f[12] << 8) | f[13]);
        Assert.Equal(IpProtocol.Icmp, f[14 + 9]);
        Assert.Equal(G.Host, ReadU32(f, 14 + 12));
        Assert.Equal(G.Guest, ReadU32(f, 14 + 16));
        Assert.Equal(3, f[34]);
        Assert.Equal(3, f[35]);
        Assert.Equal(0, Checksum.Compute(f.AsSpan(34)));
        const int Quote = 42;
        Assert.Equal(G.Guest, ReadU32(f, Quote + 12));
        Assert.Equal(G.Host, ReadU32(f, Quote + 16));
        Assert.Equal(IpProtocol.Udp, f[Quote + 9]);
        Assert.Equal(4444, ReadU16(f, Quote + 20));
        Assert.Equal(port, ReadU16(f, Quote + 22));
        Assert.Equal("knock", System.Text.Encoding.ASCII.GetString(f, Quote + 28, 5));
        Assert.Equal(1, gate.Engine.Counters.PortUnreachable);
    }

    /// <summary>
    /// The host alias's IPv6 address, UDP: the host's ::1 refuses, so the flow moves to 127.0.0.1 for that port and the
    /// refused datagram is sent again there (a server on 127.0.0.1 only gets it and its reply reaches the guest from the
    /// host alias's IPv6 address); on a port where 127.0.0.1 refuses too, the guest gets ICMPv6 port unreachable (type 1
    /// code 4) from the host alias.
    /// </summary>
    [Fact]
    public void TheHostAliasOverIpv6FallsBackTo127001ThenAnswersPortUnreachable()
    {
        (EngineGate gate, CapturingSink frames, UdpNat nat) = Setup();
        using UdpNat _ = nat;
        using var server = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        ushort port = (ushort)((IPEndPoint)server.Client.LocalEndPoint!).Port;
        lock (gate.Sync)
        {
            nat.Send6(new Udp6Flow(Guest6, 6666, Host6, port), UInt128.One, "hello v4"u8);
        }
        server.Client.ReceiveTimeout = 5000;
        IPEndPoint? from = null;
        Assert.Equal("hello v4", System.Text.Encoding.ASCII.GetString(server.Receive(ref from)));
        server.Send("hi guest"u8.ToArray(), from!);
        byte[] reply = NextFrame(gate, frames);
        Assert.Equal(0x86DD, (reply[12] << 8) | reply[13]);
        Assert.Equal(IpProtocol.Udp, reply[14 + 6]);
        Assert.Equal(Host6, Ip6.Read(reply.AsSpan(14 + 8)));
        Assert.Equal(port, ReadU16(reply, 54));
        Assert.Equal(6666, ReadU16(reply, 56));
        Assert.Equal("hi guest", System.Text.Encoding.ASCII.GetString(reply, 62, 8));
        // Later datagrams of the flow to that port go to 127.0.0.1 directly.
        lock (gate.Sync)
        {
            nat.Send6(new Udp6Flow(Guest6, 6666, Host6, port), UInt128.One, "again"u8);
        }
        Assert.Equal("again", System.Text.Encoding.ASCII.GetString(server.Receive(ref from)));

        // Nothing on either loopback: ::1 refuses, 127.0.0.1 refuses, the guest is told.
        ushort closed = ClosedPort(IPAddress.IPv6Loopback);
        lock (gate.Sync)
        {
            nat.Send6(new Udp6Flow(Guest6, 6666, Host6, closed), UInt128.One, "anyone?"u8);
        }
        byte[] f = NextFrame(gate, frames);
        Assert.Equal(0x86DD, (f[12] << 8) | f[13]);
        Assert.Equal(Ipv6ExtensionChain.Icmpv6, f[14 + 6]);
        Assert.Equal(Host6, Ip6.Read(f.AsSpan(14 + 8)));
        Assert.Equal(Guest6, Ip6.Read(f.AsSpan(14 + 24)));
        Assert.Equal(1, f[54]);
        Assert.Equal(4, f[55]);
        Assert.Equal(0, Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(Host6, Guest6, Ipv6ExtensionChain.Icmpv6, f.Length - 54), f.AsSpan(54))));
        const int Quote = 62;
        Assert.Equal(Guest6, Ip6.Read(f.AsSpan(Quote + 8)));
        Assert.Equal(Host6, Ip6.Read(f.AsSpan(Quote + 24)));
        Assert.Equal(6666, ReadU16(f, Quote + 40));
        Assert.Equal(closed, ReadU16(f, Quote + 42));
        Assert.Equal("anyone?", System.Text.Encoding.ASCII.GetString(f, Quote + 48, 7));
    }

    private static uint ReadU32(byte[] b, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b.AsSpan(at));

    private static ushort ReadU16(byte[] b, int at) => System.Buffers.Binary.BinaryPrimitives.ReadUInt16BigEndian(b.AsSpan(at));
}
