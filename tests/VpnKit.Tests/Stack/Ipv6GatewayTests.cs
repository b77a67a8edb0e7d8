using System.Buffers.Binary;
using System.Diagnostics;
using CsCheck;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>
/// The engine's IPv6 slice (issue 18, items 2 and 4): NDP as a router, SLAAC's RA, echo, DHCPv6, DNS, the fast refusal
/// of everything else, and hostile input (deep chains, guest routers, spoofed sources, truncated options, floods).
/// </summary>
public sealed class Ipv6GatewayTests
{
    private static readonly UInt128 Prefix = Ip6.Parse("fd00:6b69:7400::");
    private static readonly UInt128 Gw6 = Ip6.Parse("fd00:6b69:7400::1");
    private static readonly UInt128 Host6 = Ip6.Parse("fd00:6b69:7400::2");
    private static readonly UInt128 GwLl = Ip6.Parse("fe80::f416:36ff:febc:f9c6");
    private static readonly UInt128 GuestLl = Ip6.Parse("fe80::ff:fe00:3");
    private static readonly UInt128 Guest6 = Ip6.Parse("fd00:6b69:7400::1234");
    private static readonly UInt128 Outside = Ip6.Parse("2001:db8::1");

    private sealed class RecordingDns : IDnsQueries
    {
        public List<(Udp6Flow Flow, byte[] Query)> Queries { get; } = [];

        public void QueryReceived(in Udp6Flow flow, ReadOnlySpan<byte> query) => Queries.Add((flow, query.ToArray()));
    }

    /// <summary>::ffff:127.0.0.1: an IPv4-mapped address, which an IPv6 host socket would take to IPv4's loopback.</summary>
    private static readonly UInt128 Mapped = Ip6.Parse("::ffff:127.0.0.1");

    private readonly CapturingSink _sink = new();
    private readonly RecordingDns _dns = new();
    private RecordingFlows _flows = new();
    private Gateway _gw;

    public Ipv6GatewayTests() => _gw = NewGateway(new GatewayOptions());

    private Gateway NewGateway(GatewayOptions o) => new(o, _sink, _flows = new RecordingFlows()) { Dns = _dns };

    // ---- building guest frames ----

    private static byte[] Frame(UInt128 src, UInt128 dst, byte nextHeader, ReadOnlySpan<byte> payload, byte hopLimit = 64, MacAddress? dstMac = null)
    {
        byte[] f = new byte[14 + 40 + payload.Length];
        EthernetFrame.Write(f, dstMac ?? (Ip6.IsMulticast(dst) ? Ip6.MulticastMac(dst) : G.GatewayMac), G.GuestMac, EtherType.Ipv6);
        Ipv6Packet.Write(f.AsSpan(14), payload.Length, nextHeader, hopLimit, src, dst);
        payload.CopyTo(f.AsSpan(54));
        return f;
    }

    private static byte[] Icmp(UInt128 src, UInt128 dst, byte[] message, byte hopLimit = 255)
    {
        Icmpv6Message.WriteChecksum(message, src, dst);
        return Frame(src, dst, Ipv6ExtensionChain.Icmpv6, message, hopLimit);
    }

    private static byte[] Rs(UInt128 src, byte hopLimit = 255, bool sll = true)
    {
        byte[] m = new byte[sll ? 16 : 8];
        m[0] = Icmpv6Type.RouterSolicitation;
        if (sll)
        {
            Ndp.WriteLinkLayerOption(m.AsSpan(8), NdpOption.SourceLinkLayerAddress, G.GuestMac);
        }
        return Icmp(src, Ip6.AllRouters, m, hopLimit);
    }

    private static byte[] Ns(UInt128 src, UInt128 target, bool unspecified = false)
    {
        byte[] m = new byte[32];
        Ndp.WriteNeighborSolicitation(m, target, G.GuestMac);
        return unspecified ? Icmp(UInt128.Zero, Ip6.SolicitedNode(target), m[..24]) : Icmp(src, Ip6.SolicitedNode(target), m);
    }

    private static byte[] Echo(UInt128 src, UInt128 dst, ushort id, ushort seq, byte[] data)
    {
        byte[] m = new byte[8 + data.Length];
        m[0] = Icmpv6Type.EchoRequest;
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(6), seq);
        data.CopyTo(m, 8);
        return Icmp(src, dst, m, 64);
    }

    private static byte[] Udp(UInt128 src, UInt128 dst, ushort srcPort, ushort dstPort, byte[] payload)
    {
        byte[] d = new byte[8 + payload.Length];
        payload.CopyTo(d, 8);
        UdpDatagram.Write(d, srcPort, dstPort, 0, 0);
        d[6] = d[7] = 0;
        ushort sum = Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(src, dst, IpProtocol.Udp, d.Length), d));
        BinaryPrimitives.WriteUInt16BigEndian(d.AsSpan(6), sum == 0 ? (ushort)0xFFFF : sum);
        return Frame(src, dst, IpProtocol.Udp, d);
    }

    private static byte[] Syn(UInt128 src, UInt128 dst, ushort dstPort, uint seq, ushort srcPort = 40000) =>
        Tcp(src, dst, srcPort, dstPort, seq, 0, TcpFlags.Syn, []);

    private static byte[] Tcp(UInt128 src, UInt128 dst, ushort srcPort, ushort dstPort, uint seq, uint ack, TcpFlags flags, byte[] payload,
        TcpOptions? options = null, ushort window = 65535)
    {
        byte[] o = new byte[40];
        int hl = TcpSegment.HeaderLengthFor(options?.Write(o) ?? 0);
        byte[] t = new byte[hl + payload.Length];
        o.AsSpan(0, hl - 20).CopyTo(t.AsSpan(20));
        payload.CopyTo(t, hl);
        TcpSegment.Write(t, hl, srcPort, dstPort, seq, ack, flags, window, 0, 0);
        t[16] = t[17] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(t.AsSpan(16), Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(src, dst, IpProtocol.Tcp, t.Length), t)));
        return Frame(src, dst, IpProtocol.Tcp, t);
    }

    // ---- reading what the gateway sent ----

    private sealed record Out(MacAddress DstMac, UInt128 Src, UInt128 Dst, byte HopLimit, byte NextHeader, byte[] Upper);

    private static Out Decode(byte[] frame)
    {
        Assert.True(EthernetFrame.TryParse(frame, out EthernetFrame e));
        Assert.Equal(EtherType.Ipv6, e.EtherType);
        Assert.Equal(G.GatewayMac, e.Source);
        Assert.Equal(Ipv6Error.None, Ipv6Packet.TryParse(e.Payload, out Ipv6Packet ip));
        byte[] upper = ip.Payload.ToArray();
        // Every upper layer the gateway sends carries a checksum over the IPv6 pseudo-header (RFC 8200 §8.1).
        Assert.Equal(0, Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(ip.Source, ip.Destination, ip.NextHeader, upper.Length), upper)));
        return new Out(e.Destination, ip.Source, ip.Destination, ip.HopLimit, ip.NextHeader, upper);
    }

    private Out Single()
    {
        byte[] f = Assert.Single(_sink.Take());
        return Decode(f);
    }

    private static Dictionary<byte, byte[]> Options(byte[] icmp, int at)
    {
        var found = new Dictionary<byte, byte[]>();
        var r = new NdpOptionReader(icmp.AsSpan(at));
        while (r.TryNext(out byte type, out ReadOnlySpan<byte> body))
        {
            found[type] = body.ToArray();
        }
        Assert.False(r.Malformed);
        return found;
    }

    [Fact]
    public void RouterSolicitationGetsAnAdvertisementForSlaacWithMtuRdnssAndSearchList()
    {
        _gw = NewGateway(new GatewayOptions { SearchDomains = ["corp.test"] });
        _gw.Receive(Rs(GuestLl), 0);
        Out ra = Single();
        Assert.Equal(G.GuestMac, ra.DstMac);
        Assert.Equal(GwLl, ra.Src); // RFC 4861 §4.2: from the link-local address
        Assert.Equal(GuestLl, ra.Dst);
        Assert.Equal(255, ra.HopLimit);
        Assert.Equal(Icmpv6Type.RouterAdvertisement, ra.Upper[0]);
        Assert.Equal(0x40, ra.Upper[5]); // O: other configuration by stateless DHCPv6; not M
        Assert.Equal(1800, BinaryPrimitives.ReadUInt16BigEndian(ra.Upper.AsSpan(6)));
        Dictionary<byte, byte[]> o = Options(ra.Upper, 16);
        Assert.Equal(G.GatewayMac, MacAddress.Read(o[NdpOption.SourceLinkLayerAddress]));
        Assert.Equal(1500u, BinaryPrimitives.ReadUInt32BigEndian(o[NdpOption.Mtu].AsSpan(2)));
        byte[] prefix = o[NdpOption.PrefixInformation];
        Assert.Equal(64, prefix[0]);
        Assert.Equal(0xC0, prefix[1]); // on-link and autonomous
        Assert.Equal(Prefix, Ip6.Read(prefix.AsSpan(14)));
        Assert.Equal(Gw6, Ip6.Read(o[NdpOption.RecursiveDnsServer].AsSpan(6)));
        Assert.Equal([4, .. "corp"u8, 4, .. "test"u8, 0], o[NdpOption.DnsSearchList].AsSpan(6, 11).ToArray());
        Assert.Equal(1, _gw.NeighbourCount); // learned from the source link-layer option
    }

    [Fact]
    public void NeighborDiscoveryThatCouldHaveBeenForwardedOrIsTruncatedIsIgnored()
    {
        _gw.Receive(Rs(GuestLl, hopLimit: 64), 0); // RFC 4861 §6.1.1: hop limit 255 only
        byte[] ns = Ns(GuestLl, Gw6);
        ns[^7] = 3; // the option claims 24 bytes, past the end
        Icmpv6Message.WriteChecksum(ns.AsSpan(54), GuestLl, Ip6.SolicitedNode(Gw6));
        _gw.Receive(ns, 0);
        byte[] zero = Ns(GuestLl, Gw6);
        zero[^7] = 0; // a zero-length option (§4.6)
        Icmpv6Message.WriteChecksum(zero.AsSpan(54), GuestLl, Ip6.SolicitedNode(Gw6));
        _gw.Receive(zero, 0);
        _gw.Receive(Icmp(GuestLl, Ip6.SolicitedNode(Gw6), [Icmpv6Type.NeighborSolicitation, 0, 0, 0, 0, 0, 0, 0]), 0); // no target
        Assert.Empty(_sink.Take());
        Assert.Equal(4, _gw.Counters.NdpInvalid);
    }

    [Theory]
    [InlineData("fd00:6b69:7400::1", true)]
    [InlineData("fe80::f416:36ff:febc:f9c6", true)]
    [InlineData("fd00:6b69:7400::2", false)]
    public void NeighborSolicitationsForTheGatewaysAddressesAreAnswered(string target, bool router)
    {
        UInt128 t = Ip6.Parse(target);
        _gw.Receive(Ns(Guest6, t), 0);
        Out na = Single();
        Assert.Equal(G.GuestMac, na.DstMac);
        Assert.Equal(t, na.Src);
        Assert.Equal(Guest6, na.Dst);
        Assert.Equal(255, na.HopLimit);
        Assert.Equal(Icmpv6Type.NeighborAdvertisement, na.Upper[0]);
        Assert.Equal((router ? 0x80 : 0) | 0x60, na.Upper[4]); // R for the gateway only, S, O
        Assert.Equal(t, Ip6.Read(na.Upper.AsSpan(8)));
        Assert.Equal(G.GatewayMac, MacAddress.Read(Options(na.Upper, 24)[NdpOption.TargetLinkLayerAddress]));
    }

    [Fact]
    public void DuplicateAddressDetectionOfAGatewayAddressIsDefendedAndOthersAreLeftAlone()
    {
        _gw.Receive(Ns(UInt128.Zero, Gw6, unspecified: true), 0);
        Out na = Single();
        Assert.Equal(Ip6.AllNodes, na.Dst); // RFC 4861 §7.2.4: to all nodes, not solicited
        Assert.Equal(0xA0, na.Upper[4]);
        _gw.Receive(Ns(UInt128.Zero, Guest6, unspecified: true), 0); // a guest's own DAD
        _gw.Receive(Ns(GuestLl, Ip6.Parse("fd00:6b69:7400::99")), 0); // another guest's address
        Assert.Empty(_sink.Take());
    }

    [Theory]
    [InlineData("fd00:6b69:7400::1")]
    [InlineData("fe80::f416:36ff:febc:f9c6")]
    public void EchoToTheGatewayIsAnsweredFromTheAddressAsked(string address)
    {
        UInt128 to = Ip6.Parse(address);
        byte[] data = [1, 2, 3, 4, 5];
        _gw.Receive(Echo(Guest6, to, 0x1234, 7, data), 0);
        Out reply = Single();
        Assert.Equal(to, reply.Src);
        Assert.Equal(Guest6, reply.Dst);
        Assert.Equal(Icmpv6Type.EchoReply, reply.Upper[0]);
        Assert.Equal(0x1234, BinaryPrimitives.ReadUInt16BigEndian(reply.Upper.AsSpan(4)));
        Assert.Equal(7, BinaryPrimitives.ReadUInt16BigEndian(reply.Upper.AsSpan(6)));
        Assert.Equal(data, reply.Upper[8..]);
    }

    [Fact]
    public void RoutersAdvertisementsRedirectsAndClaimsOfGatewayAddressesFromAGuestChangeNothing()
    {
        byte[] ra = new byte[16];
        Ndp.WriteRouterAdvertisement(ra, 64, false, false, 9000);
        _gw.Receive(Icmp(GuestLl, Ip6.AllNodes, ra), 0);
        byte[] redirect = new byte[40];
        redirect[0] = Icmpv6Type.Redirect;
        _gw.Receive(Icmp(GuestLl, GwLl, redirect), 0);
        byte[] na = new byte[32];
        Ndp.WriteNeighborAdvertisement(na, Gw6, MacAddress.Parse("02:66:66:66:66:66"), router: true, solicited: false, @override: true);
        _gw.Receive(Icmp(GuestLl, Ip6.AllNodes, na), 0);
        Assert.Empty(_sink.Take());
        Assert.Equal(2, _gw.Counters.NdpFromGuestRouter);
        Assert.Equal(1, _gw.Counters.Ipv6Spoofed);
        // The gateway still answers for its address with its own MAC.
        _gw.Receive(Ns(Guest6, Gw6), 1);
        Assert.Equal(G.GatewayMac, MacAddress.Read(Options(Single().Upper, 24)[NdpOption.TargetLinkLayerAddress]));
    }

    [Theory]
    [InlineData("2001:db8::5")] // outside the prefix: not a source a guest has
    [InlineData("fd00:6b69:7400::1")] // the gateway's own
    [InlineData("fd00:6b69:7400::2")] // the host alias's
    [InlineData("ff02::1")] // a group
    public void SpoofedSourcesAreDroppedAndCounted(string source)
    {
        UInt128 src = Ip6.Parse(source);
        _gw.Receive(Echo(src, Gw6, 1, 1, []), 0);
        _gw.Receive(Udp(src, Gw6, 5353, 53, new byte[20]), 0);
        Assert.Empty(_sink.Take());
        Assert.Empty(_dns.Queries);
        Assert.Equal(2, _gw.Counters.Ipv6Spoofed);
        Assert.Equal(0, _gw.NeighbourCount);
    }

    [Fact]
    public void ATenThousandDeepExtensionChainIsRefusedCheaply()
    {
        // 10,000 empty Destination Options headers, then ICMPv6 echo: the walk stops after eight (RFC 8200 §4.1).
        byte[] chain = new byte[10_000 * 8 + 8];
        for (int i = 0; i < 10_000; i++)
        {
            chain[i * 8] = i == 9_999 ? Ipv6ExtensionChain.Icmpv6 : Ipv6ExtensionChain.DestinationOptions;
        }
        chain[80_000] = Icmpv6Type.EchoRequest;
        byte[] f = new byte[14 + 40 + chain.Length];
        EthernetFrame.Write(f, G.GatewayMac, G.GuestMac, EtherType.Ipv6);
        Ipv6Packet.Write(f.AsSpan(14), chain.Length & 0xFFFF, Ipv6ExtensionChain.DestinationOptions, 64, Guest6, Gw6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(18), 65535); // as long as the field allows; the rest is excess
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < 1000; i++)
        {
            _gw.Receive(f, i);
        }
        Assert.True(clock.ElapsedMilliseconds < 2000, $"1000 deep chains took {clock.ElapsedMilliseconds} ms");
        Assert.Equal(1000, _gw.Counters.Ipv6Malformed);
        Assert.Empty(_sink.Take());
        _gw.Receive(Echo(Guest6, Gw6, 1, 1, []), 2000);
        Assert.Equal(Icmpv6Type.EchoReply, Single().Upper[0]);
    }

    [Fact]
    public void ZeroLengthJumboTruncatedAndFragmentedPacketsAreDroppedWithoutAnswer()
    {
        _gw.Receive(Frame(Guest6, Gw6, Ipv6ExtensionChain.NoNextHeader, []), 0); // zero-length payload: nothing to do
        _gw.Receive(Frame(Guest6, Gw6, Ipv6ExtensionChain.Icmpv6, []), 0); // zero-length ICMPv6
        _gw.Receive(Frame(Guest6, Gw6, IpProtocol.Udp, []), 0);
        _gw.Receive(Frame(Guest6, Gw6, IpProtocol.Tcp, new byte[7]), 0);
        // A Hop-by-Hop header with a Jumbo Payload option (RFC 2675) and payload length 0.
        byte[] jumbo = [Ipv6ExtensionChain.Icmpv6, 0, 0xC2, 4, 0, 1, 0, 0, .. new byte[100]];
        byte[] jf = Frame(Guest6, Gw6, Ipv6ExtensionChain.HopByHop, jumbo);
        jf[18] = jf[19] = 0;
        _gw.Receive(jf, 0);
        byte[] fragment = [Ipv6ExtensionChain.Icmpv6, 0, 0, 1, 0, 0, 0, 9, 128, 0, 0, 0, 0, 0, 0, 0];
        _gw.Receive(Frame(Guest6, Gw6, Ipv6ExtensionChain.Fragment, fragment), 0);
        _gw.Receive(Frame(Guest6, Gw6, 6, new byte[3])[..50], 0); // cut inside the fixed header
        Assert.Empty(_sink.Take());
        Assert.Equal(1, _gw.Counters.Ipv6Fragments);
        Assert.True(_gw.Counters.Ipv6Malformed >= 5, $"{_gw.Counters.Ipv6Malformed}");
    }

    /// <summary>
    /// Cuts a whole frame's IPv6 packet (no extension headers) into fragments carrying <paramref name="size"/> bytes of its
    /// payload each (RFC 8200 §4.5: a Fragment header, next header = the original's, offset in 8-byte units, M flag).
    /// </summary>
    private static List<byte[]> Fragments6(byte[] frame, int size, uint id = 0x1234_5678)
    {
        byte next = frame[14 + 6];
        ReadOnlySpan<byte> payload = frame.AsSpan(54);
        var list = new List<byte[]>();
        for (int off = 0; off < payload.Length; off += size)
        {
            int n = Math.Min(size, payload.Length - off);
            byte[] body = new byte[8 + n];
            body[0] = next;
            BinaryPrimitives.WriteUInt16BigEndian(body.AsSpan(2), (ushort)((off / 8) << 3 | (off + n < payload.Length ? 1 : 0)));
            BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(4), id);
            payload.Slice(off, n).CopyTo(body.AsSpan(8));
            list.Add(Frame(Ipv6Packet.TryParse(frame.AsSpan(14), out Ipv6Packet ip) == Ipv6Error.None ? ip.Source : 0, ip.Destination, Ipv6ExtensionChain.Fragment, body));
        }
        return list;
    }

    [Fact]
    public void FragmentsOfADatagramAreReassembledInAnyOrderAndOverlapsDropIt()
    {
        byte[] data = new byte[3000];
        new Random(6).NextBytes(data);
        List<byte[]> frags = Fragments6(Udp(Guest6, Outside, 5000, 53, data), 1232);
        Assert.Equal(3, frags.Count);
        _gw.Receive(frags[2], 0);
        _gw.Receive(frags[0], 1);
        _gw.Receive(frags[0], 1); // an exact duplicate is ignored (RFC 5722 leaves it alone)
        Assert.Empty(_flows.Udp6);
        _gw.Receive(frags[1], 2);
        var (flow, payload) = Assert.Single(_flows.Udp6);
        Assert.Equal(new Udp6Flow(Guest6, 5000, Outside, 53), flow);
        Assert.Equal(data, payload);
        Assert.Equal((3 + 1, 1L, 0L), (_gw.Counters.Ipv6Fragments, _gw.Counters.Reassembled, _gw.ReassemblyDropped));

        // RFC 5722: a fragment that overlaps another with other bytes drops the whole packet, quietly.
        List<byte[]> again = Fragments6(Udp(Guest6, Outside, 5001, 53, data), 1232, id: 9);
        byte[] liar = (byte[])again[1].Clone();
        liar[^1] ^= 0xFF;
        BinaryPrimitives.WriteUInt16BigEndian(liar.AsSpan(54 + 2), (ushort)((1224 / 8) << 3 | 1)); // starts 8 bytes early
        _gw.Receive(again[0], 3);
        _gw.Receive(liar, 3);
        _gw.Receive(again[1], 3);
        _gw.Receive(again[2], 3);
        Assert.Single(_flows.Udp6);
        Assert.Empty(_sink.Take());
        Assert.True(_gw.ReassemblyDropped >= 1);

        // A corrupted fragment: the reassembled datagram's checksum fails and nothing is delivered.
        List<byte[]> bad = Fragments6(Udp(Guest6, Outside, 5002, 53, data), 1232, id: 10);
        bad[1][^1] ^= 0x01;
        bad.ForEach(f => _gw.Receive(f, 4));
        Assert.Single(_flows.Udp6);
    }

    [Fact]
    public void DnsQueriesToTheGatewayGoToTheForwarderAndTheAnswerComesBack()
    {
        byte[] query = [0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, (byte)'x', 0, 0, 28, 0, 1];
        _gw.Receive(Udp(Guest6, Gw6, 33333, 53, query), 0);
        (Udp6Flow flow, byte[] q) = Assert.Single(_dns.Queries);
        Assert.Equal(new Udp6Flow(Guest6, 33333, Gw6, 53), flow);
        Assert.Equal(query, q);
        Assert.Empty(_sink.Take());
        byte[] answer = [.. query];
        answer[2] |= 0x80;
        Assert.True(_gw.SendUdp6(flow, answer, 1));
        Out reply = Single();
        Assert.Equal(G.GuestMac, reply.DstMac);
        Assert.Equal(Gw6, reply.Src);
        Assert.Equal(Guest6, reply.Dst);
        Assert.Equal(53, BinaryPrimitives.ReadUInt16BigEndian(reply.Upper));
        Assert.Equal(33333, BinaryPrimitives.ReadUInt16BigEndian(reply.Upper.AsSpan(2)));
        Assert.Equal(answer, reply.Upper[8..]);
        // A guest whose MAC is not known is asked for it (to its solicited-node group); the answer is lost.
        UInt128 stranger = Prefix | 0x77;
        Assert.False(_gw.SendUdp6(new Udp6Flow(stranger, 1, Gw6, 53), answer, 2));
        Out ns = Single();
        Assert.Equal(Ip6.SolicitedNode(stranger), ns.Dst);
        Assert.Equal(Icmpv6Type.NeighborSolicitation, ns.Upper[0]);
    }

    [Fact]
    public void StatelessDhcpv6InformationRequestGetsTheDnsServerAndTheSearchList()
    {
        byte[] clientId = [0, 3, 0, 1, 2, 0, 0, 0, 0, 3];
        byte[] req = [Dhcpv6.InformationRequest, 1, 2, 3, 0, 1, 0, (byte)clientId.Length, .. clientId, 0, 6, 0, 4, 0, 23, 0, 24];
        _gw.Receive(Udp(GuestLl, Dhcpv6.AllServers, 546, 547, req), 0);
        Out reply = Single();
        Assert.Equal(GwLl, reply.Src);
        Assert.Equal(GuestLl, reply.Dst);
        Assert.Equal(547, BinaryPrimitives.ReadUInt16BigEndian(reply.Upper));
        Assert.Equal(546, BinaryPrimitives.ReadUInt16BigEndian(reply.Upper.AsSpan(2)));
        Assert.True(Dhcpv6Message.TryParse(reply.Upper.AsSpan(8), out Dhcpv6Message m));
        Assert.Equal(Dhcpv6.Reply, m.Type);
        Assert.Equal(0x010203u, m.TransactionId);
        Assert.True(m.TryGetOption(Dhcpv6.OptionClientId, out ReadOnlySpan<byte> echoed));
        Assert.Equal(clientId, echoed.ToArray());
        Assert.True(m.TryGetOption(Dhcpv6.OptionDnsServers, out ReadOnlySpan<byte> servers));
        Assert.Equal(Gw6, Ip6.Read(servers));
        Assert.True(m.TryGetOption(Dhcpv6.OptionDomainList, out _));
        // Solicit (stateful addresses) is not served.
        _gw.Receive(Udp(GuestLl, Dhcpv6.AllServers, 546, 547, [Dhcpv6.Solicit, 1, 2, 3]), 1);
        Assert.Empty(_sink.Take());
    }

    [Theory]
    [InlineData("::1")]
    [InlineData("::7f00:1")] // IPv4-compatible
    public void TrafficTheGatewayDoesNotCarryIsRefusedAtOnce(string address)
    {
        UInt128 to = Ip6.Parse(address);
        _gw.Receive(Syn(Guest6, to, 443, 1000), 0);
        Out rst = Single();
        Assert.Equal(to, rst.Src);
        Assert.Equal(IpProtocol.Tcp, rst.NextHeader);
        Assert.Equal((byte)(TcpFlags.Rst | TcpFlags.Ack), rst.Upper[13]);
        Assert.Equal(1001u, BinaryPrimitives.ReadUInt32BigEndian(rst.Upper.AsSpan(8)));

        _gw.Receive(Udp(Guest6, to, 1000, 9, new byte[10]), 0);
        Out unreachable = Single();
        Assert.Equal(Gw6, unreachable.Src);
        Assert.Equal([Icmpv6Type.DestinationUnreachable, 1], unreachable.Upper[..2]); // administratively prohibited
        Assert.Equal(to, Ip6.Read(unreachable.Upper.AsSpan(8 + 24))); // the offending packet is quoted
        _gw.Receive(Udp(Guest6, Gw6, 1000, 9, new byte[10]), 0);
        Assert.Equal([Icmpv6Type.DestinationUnreachable, 4], Single().Upper[..2]); // port unreachable
        _gw.Receive(Echo(Guest6, to, 1, 1, []), 0);
        Assert.Equal(Icmpv6Type.DestinationUnreachable, Single().Upper[0]);
        Assert.Equal(3, _gw.Counters.Ipv6Refused);
        Assert.Empty(_flows.ConnectRequests);
        Assert.Empty(_flows.Udp6);
        Assert.Empty(_flows.Pings6);
    }

    [Fact]
    public void AnIpv4MappedDestinationIsRefusedWhateverTheProtocol()
    {
        // ::ffff:127.0.0.1 would reach IPv4's loopback through a host IPv6 socket, around IPv4's rules.
        _gw.Receive(Syn(Guest6, Mapped, 443, 1000), 0);
        _gw.Receive(Udp(Guest6, Mapped, 1000, 9, new byte[10]), 0);
        _gw.Receive(Echo(Guest6, Mapped, 1, 1, []), 0);
        foreach (byte[] f in _sink.Take())
        {
            Out o = Decode(f);
            Assert.Equal([Icmpv6Type.DestinationUnreachable, 1], o.Upper[..2]);
            Assert.Equal(Guest6, o.Dst);
        }
        Assert.Equal(3, _gw.Counters.Ipv6Refused);
        Assert.Empty(_flows.ConnectRequests);
        Assert.Empty(_flows.Udp6);
        Assert.Empty(_flows.Pings6);
    }

    [Fact]
    public void ErrorsAreRateLimited()
    {
        for (int i = 0; i < 1000; i++)
        {
            _gw.Receive(Udp(Guest6, Mapped, (ushort)(1000 + i), 9, []), 5);
            _gw.Receive(Syn(Guest6, Mapped, 80, (uint)i), 5);
        }
        int sent = _sink.Take().Count;
        Assert.InRange(sent, 1, 20);
        Assert.Equal(2000 - sent, _gw.Counters.Icmpv6ErrorsLimited);
        _gw.Receive(Udp(Guest6, Mapped, 1, 9, []), 1005); // a second later the bucket has refilled
        Assert.Single(_sink.Take());
    }

    [Fact]
    public void AGuestAppearingGetsThreeInitialAdvertisementsThenPeriodicOnes()
    {
        _gw.Receive(Echo(GuestLl, GwLl, 1, 1, []), 1000);
        _sink.Take();
        Assert.Equal(1000, _gw.NextDeadline);
        var sent = new List<long>();
        for (long now = 1000; now < 1_300_000; now += 500)
        {
            _gw.OnTimer(now);
            foreach (byte[] f in _sink.Take())
            {
                Out ra = Decode(f);
                Assert.Equal(Ip6.AllNodes, ra.Dst);
                Assert.Equal(Ip6.MulticastMac(Ip6.AllNodes), ra.DstMac);
                Assert.Equal(Icmpv6Type.RouterAdvertisement, ra.Upper[0]);
                sent.Add(now);
            }
        }
        Assert.Equal([1000, 17_000, 33_000, 633_000, 1_233_000], sent);
    }

    [Fact]
    public void WithIpv6OffNothingIsAnsweredOrAdvertised()
    {
        _gw = NewGateway(new GatewayOptions { Ipv6 = false });
        _gw.Receive(Rs(GuestLl), 0);
        _gw.Receive(Ns(Guest6, Gw6), 0);
        _gw.Receive(Echo(Guest6, Gw6, 1, 1, []), 0);
        _gw.Receive(Udp(Guest6, Gw6, 1, 53, new byte[12]), 0);
        _gw.OnTimer(100_000);
        Assert.Empty(_sink.Take());
        Assert.Empty(_dns.Queries);
        Assert.Equal(long.MaxValue, _gw.NextDeadline);
        Assert.Equal(4, _gw.Counters.NotForUs);
    }

    [Fact]
    public void ANeighbourFloodIsBounded()
    {
        for (int i = 0; i < 10_000; i++)
        {
            _gw.Receive(Ns(Prefix | (UInt128)(0x1000 + i), Gw6), i);
        }
        Assert.Equal(10_000, _sink.Take().Count);
        Assert.Equal(Gateway.MaxNeighbours, _gw.NeighbourCount);
        // The most recent guests are the ones kept.
        Assert.True(_gw.SendUdp6(new Udp6Flow(Prefix | (UInt128)(0x1000 + 9_999), 1, Gw6, 53), [1], 10_000));
    }

    [Fact]
    public void RandomAndMutatedIpv6FramesNeverThrowAndTheGatewayKeepsAnswering()
    {
        byte[][] seeds =
        [
            Rs(GuestLl), Ns(Guest6, Gw6), Ns(UInt128.Zero, Gw6, unspecified: true), Echo(Guest6, Host6, 1, 2, new byte[16]),
            Udp(Guest6, Gw6, 1000, 53, new byte[30]), Udp(GuestLl, Dhcpv6.AllServers, 546, 547, [Dhcpv6.InformationRequest, 1, 2, 3]),
            Syn(Guest6, Outside, 80, 1),
        ];
        long now = 0;
        Gen.Select(Gen.Int[0, seeds.Length - 1], Gen.Int[0, 200], Gen.Byte, Gen.Int[0, 100], Gen.Byte.Array[0, 120]).Sample((s, pos, val, cut, noise) =>
        {
            byte[] f = (byte[])seeds[s].Clone();
            f[pos % f.Length] = val;
            if (cut % 3 == 0)
            {
                f = f.AsSpan(0, Math.Max(0, f.Length - cut)).ToArray();
            }
            _gw.Receive(f, now);
            byte[] n = new byte[15 + noise.Length];
            EthernetFrame.Write(n, G.GatewayMac, G.GuestMac, EtherType.Ipv6);
            n[14] = 0x60;
            noise.CopyTo(n, 15);
            _gw.Receive(n, now);
            now += 13;
            _gw.OnTimer(now);
            _sink.Frames.Clear();
            Assert.True(_gw.NeighbourCount <= Gateway.MaxNeighbours);
        }, iter: 20_000, threads: 1);
        _gw.Receive(Ns(Guest6, Gw6), now + 10_000);
        Assert.Equal(Icmpv6Type.NeighborAdvertisement, Single().Upper[0]);
    }

    // ---- NAT66 (issue 18, item 3): the engine's side ----

    [Theory]
    [InlineData("2001:db8::1")]
    [InlineData("fd00:6b69:7400::2")] // the host alias (the NAT takes it to the host's ::1)
    public void ATcpConnectionToAnIpv6DestinationIsOpenedOnlyAfterTheHostConnectAndCarriesDataBothWays(string address)
    {
        UInt128 to = Ip6.Parse(address);
        _gw.Receive(Syn(Guest6, to, 443, 1000), 0);
        Assert.Empty(_sink.Take()); // connect-before-accept: nothing until the host connect reports
        TcpSocket c = Assert.Single(_flows.ConnectRequests);
        Assert.Equal(IpAddr.V6(Guest6), c.GuestIp);
        Assert.Equal(IpAddr.V6(to), c.RemoteIp);
        Assert.False(c.RemoteIp.IsV4);

        c.CompleteConnect(true, 1);
        Out synAck = Single();
        Assert.Equal(to, synAck.Src);
        Assert.Equal(Guest6, synAck.Dst);
        Assert.Equal(IpProtocol.Tcp, synAck.NextHeader);
        Assert.Equal((byte)(TcpFlags.Syn | TcpFlags.Ack), synAck.Upper[13]);
        Assert.Equal(1001u, BinaryPrimitives.ReadUInt32BigEndian(synAck.Upper.AsSpan(8)));
        // RFC 8200 §8.3: the MSS is the MTU less 60 bytes of IPv6 and TCP headers (1440 at 1500).
        Assert.Equal(1440, TcpOptions.Parse(synAck.Upper.AsSpan(20, (synAck.Upper[12] >> 4) * 4 - 20)).Mss);
        uint iss = BinaryPrimitives.ReadUInt32BigEndian(synAck.Upper.AsSpan(4));

        _gw.Receive(Tcp(Guest6, to, 40000, 443, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Psh, "hello"u8.ToArray()), 2);
        Assert.Equal(TcpState.Established, c.State);
        Assert.Equal("hello"u8.ToArray(), c.Peek().ToArray());
        c.Consume(5, 2);
        c.Write("world"u8, 3);
        Out data = _sink.Take().Select(Decode).Last();
        Assert.Equal("world"u8.ToArray(), data.Upper[20..]);
        Assert.Equal(1006u, BinaryPrimitives.ReadUInt32BigEndian(data.Upper.AsSpan(8)));
    }

    [Fact]
    public void ARefusedIpv6ConnectResetsTheGuestAtOnce()
    {
        _gw.Receive(Syn(Guest6, Outside, 9, 77), 0);
        Assert.Single(_flows.ConnectRequests).CompleteConnect(false, 1);
        Out rst = Single();
        Assert.Equal((byte)(TcpFlags.Rst | TcpFlags.Ack), rst.Upper[13]);
        Assert.Equal(78u, BinaryPrimitives.ReadUInt32BigEndian(rst.Upper.AsSpan(8)));
        Assert.Equal(0, _gw.TcpConnectionCount);
    }

    [Fact]
    public void ADatagramOrEchoTheNatRejectsGetsAnAdministrativelyProhibitedUnreachable()
    {
        _flows.Verdict = FlowVerdict.Rejected;
        byte[] sent = Udp(Guest6, Outside, 5000, 53, [1, 2, 3]);
        _gw.Receive(sent, 0);
        Out u = Single();
        // RFC 4443 §3.1: type 1, code 1, an unused word, then the packet as it came (the guest finds its socket by it).
        Assert.Equal((Icmpv6Type.DestinationUnreachable, (byte)1), (u.Upper[0], u.Upper[1]));
        Assert.Equal(sent[14..], u.Upper[8..]);
        Assert.Equal(Guest6, u.Dst);
        _gw.Receive(Echo(Guest6, Outside, 0x1234, 8, []), 0);
        Out e = Single();
        Assert.Equal((Icmpv6Type.DestinationUnreachable, (byte)1), (e.Upper[0], e.Upper[1]));
        // Dropped by the NAT without a word (deny, loss): nothing comes back.
        _flows.Verdict = FlowVerdict.Taken;
        _gw.Receive(Udp(Guest6, Outside, 5000, 53, [1, 2, 3]), 0);
        Assert.Empty(_sink.Take());
    }

    [Fact]
    public void UdpAndEchoToIpv6DestinationsGoToTheNat()
    {
        _gw.Receive(Udp(Guest6, Outside, 5000, 53, [1, 2, 3]), 0);
        _gw.Receive(Udp(Guest6, Host6, 5001, 7, [4]), 0);
        _gw.Receive(Echo(Guest6, Host6, 0x1234, 7, [9, 9]), 0);
        _gw.Receive(Echo(Guest6, Outside, 0x1234, 8, []), 0);
        Assert.Empty(_sink.Take());
        Assert.Equal([new Udp6Flow(Guest6, 5000, Outside, 53), new Udp6Flow(Guest6, 5001, Host6, 7)], _flows.Udp6.Select(u => u.Flow));
        Assert.Equal([(Host6, (ushort)0x1234, (ushort)7), (Outside, (ushort)0x1234, (ushort)8)], _flows.Pings6);

        // The NAT's answers come back from the address the guest asked.
        Assert.True(_gw.SendUdp6(new Udp6Flow(Guest6, 5000, Outside, 53), [7, 7], 1));
        Out udp = Single();
        Assert.Equal((Outside, Guest6, IpProtocol.Udp), (udp.Src, udp.Dst, udp.NextHeader));
        _gw.SendIcmp6EchoReply(Host6, Guest6, 0x1234, 7, [9, 9], 1);
        Out echo = Single();
        Assert.Equal((Host6, Icmpv6Type.EchoReply), (echo.Src, echo.Upper[0]));
        Assert.Equal(7, BinaryPrimitives.ReadUInt16BigEndian(echo.Upper.AsSpan(6)));
        Assert.Equal([9, 9], echo.Upper[8..]);
    }

    [Fact]
    public void BadChecksumsTruncatedSegmentsAndASynFloodNeverThrowAndAreBounded()
    {
        _gw = NewGateway(new GatewayOptions { MaxPendingConnects = 16, MaxTcpConnections = 32 });
        byte[] bad = Syn(Guest6, Outside, 443, 1);
        bad[^1] ^= 0xFF; // the checksum
        _gw.Receive(bad, 0);
        Assert.Equal(1, _gw.Counters.BadChecksum);
        byte[] truncated = Syn(Guest6, Outside, 443, 1);
        Ipv6Packet.Write(truncated.AsSpan(14), 12, IpProtocol.Tcp, 64, Guest6, Outside);
        _gw.Receive(truncated.AsSpan(0, 14 + 40 + 12), 0);
        Assert.Equal(1, _gw.Counters.Ipv6Malformed);
        Assert.Empty(_flows.ConnectRequests);

        // A flood of SYNs from ever new ports: at most 16 host connects in flight; the rest wait for retransmission.
        for (int i = 0; i < 1000; i++)
        {
            _gw.Receive(Syn(Guest6, Outside, 443, (uint)i, srcPort: (ushort)(10_000 + i)), 1);
        }
        Assert.Equal(16, _flows.ConnectRequests.Count);
        Assert.Equal(16, _gw.PendingConnects);
        Assert.Equal(1000 - 16, _gw.Counters.TcpPendingFull);
        foreach (TcpSocket c in _flows.ConnectRequests)
        {
            c.CompleteConnect(true, 2);
        }
        for (int i = 0; i < 1000; i++)
        {
            _gw.Receive(Syn(Guest6, Outside, 443, (uint)i, srcPort: (ushort)(20_000 + i)), 3);
        }
        Assert.Equal(32, _gw.TcpConnectionCount); // the table's cap; beyond it, RSTs (rate-limited)
        Assert.True(_gw.Counters.TcpTableFull > 0);
        _sink.Take();

        // The gateway still serves.
        _gw.Receive(Ns(Guest6, Gw6), 10_000);
        Assert.Equal(Icmpv6Type.NeighborAdvertisement, Single().Upper[0]);
    }

    // ---- TSO6: the TAP link segments IPv6 TCP (GSO_TCPV6) ----

    /// <summary>A connection to <see cref="Outside"/> through a gateway whose link offloads <paramref name="offload"/>.</summary>
    private (TcpSocket C, uint Iss) OpenOffloaded(TcpOffload offload)
    {
        _gw = NewGateway(new GatewayOptions { SegmentationOffload = offload, TcpBufferSize = 1 << 20 });
        _gw.Receive(Tcp(Guest6, Outside, 40000, 443, 1000, 0, TcpFlags.Syn, [], new TcpOptions { Mss = 1440, WindowScale = 7 }), 0);
        TcpSocket c = Assert.Single(_flows.ConnectRequests);
        c.CompleteConnect(true, 0);
        // With offload even the SYN-ACK's checksum is partial (the link finishes it): read it without Decode's check.
        uint iss = BinaryPrimitives.ReadUInt32BigEndian(Assert.Single(_sink.Take()).AsSpan(14 + 40 + 4));
        _gw.Receive(Tcp(Guest6, Outside, 40000, 443, 1001, iss + 1, TcpFlags.Ack, [], window: 1 << 13), 0); // 1 MiB at scale 7
        _sink.SegmentSizes.Clear();
        return (c, iss);
    }

    [Fact]
    public void WithTso6TheGatewaySendsIpv6SegmentsUpTo64KiBWithAPartialChecksumAndTheTcpv6Header()
    {
        var (c, iss) = OpenOffloaded(TcpOffload.Ipv4 | TcpOffload.Ipv6);
        c.Write(new byte[1 << 20], 1);
        uint acked = iss + 1, sent = acked;
        // Slow start (RFC 5681 §3.1) grows the window one MSS per ACK: ACKing every second MSS, as Linux does, a few
        // rounds open it past 64 KiB; then one ACK of everything in flight frees the window for one whole segment.
        for (int round = 0; round < 10; round++)
        {
            sent += (uint)_sink.Take().Sum(f => f.Length - 14 - 40 - 20);
            if (sent - acked >= 70_000)
            {
                break;
            }
            while (acked != sent)
            {
                acked += Math.Min(sent - acked, 2 * 1440);
                _gw.Receive(Tcp(Guest6, Outside, 40000, 443, 1001, acked, TcpFlags.Ack, [], window: 1 << 13), 10 + round);
            }
        }
        Assert.True(sent - acked >= 70_000, $"{sent - acked} bytes in flight");
        Assert.All(_sink.SegmentSizes, s => Assert.Equal(1440, s));
        _gw.Receive(Tcp(Guest6, Outside, 40000, 443, 1001, sent, TcpFlags.Ack, [], window: 1 << 13), 30);
        byte[] largestFrame = _sink.Take().MaxBy(f => f.Length)!;
        int largest = largestFrame.Length - 14 - 40 - 20;
        Assert.Equal(65535 - 20 - 60, largest); // the largest the gateway builds: IPv4's 16-bit total length bounds both
        // The checksum field holds the folded IPv6 pseudo-header sum (RFC 8200 §8.1) for the link to finish.
        Assert.Equal(Ipv6Error.None, Ipv6Packet.TryParse(largestFrame.AsSpan(14), out Ipv6Packet ip));
        Assert.Equal(20 + largest, ip.Payload.Length);
        Assert.Equal((ushort)~Checksum.Finish(Checksum.PseudoHeader6(ip.Source, ip.Destination, IpProtocol.Tcp, ip.Payload.Length)),
            BinaryPrimitives.ReadUInt16BigEndian(ip.Payload.Slice(16)));
        // The TAP's virtio-net header: NEEDS_CSUM from the TCP header at 54, checksum at +16, GSO_TCPV6 cut at the MSS.
        byte[] h = new byte[10];
        Kit.VpnKit.Links.TapLink.WriteOffloadHeader(h, largestFrame, 1440);
        Assert.Equal([1, 4], h[..2]);
        Assert.Equal(14 + 40 + 20, BinaryPrimitives.ReadUInt16LittleEndian(h.AsSpan(2)));
        Assert.Equal(1440, BinaryPrimitives.ReadUInt16LittleEndian(h.AsSpan(4)));
        Assert.Equal(54, BinaryPrimitives.ReadUInt16LittleEndian(h.AsSpan(6)));
        Assert.Equal(16, BinaryPrimitives.ReadUInt16LittleEndian(h.AsSpan(8)));
        Assert.True(Kit.VpnKit.Links.TapLink.HeaderFits(h, largestFrame));
    }

    [Fact]
    public void ALinkThatSegmentsIpv4OnlyGetsIpv6AtTheMssWithFullChecksums()
    {
        // virtio-net with HOST_TSO4 (HyperKit, vhost-user) cannot cut IPv6: it must never see a large one.
        var (c, _) = OpenOffloaded(TcpOffload.Ipv4);
        c.Write(new byte[100_000], 1);
        List<byte[]> frames = _sink.Take();
        Assert.Equal(10, frames.Count); // RFC 6928's initial window, one MSS each
        Assert.All(frames, f => Assert.Equal(1440, Decode(f).Upper.Length - 20)); // Decode verifies the checksum
        Assert.Empty(_sink.SegmentSizes);
    }

    [Fact]
    public void ALargeIpv6SegmentFromTheKernelIsTakenWholeAndAcked()
    {
        // What a TAP with TUN_F_TSO6 hands over: 60000 bytes in one IPv6 packet, its checksum partial (pseudo-header
        // only), which only a trusted frame (the kernel's virtio-net header said so) may carry.
        var (c, iss) = OpenOffloaded(TcpOffload.Ipv4 | TcpOffload.Ipv6);
        byte[] data = new byte[60_000];
        new Random(6).NextBytes(data);
        byte[] frame = Tcp(Guest6, Outside, 40000, 443, 1001, iss + 1, TcpFlags.Ack, data);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(54 + 16),
            (ushort)~Checksum.Finish(Checksum.PseudoHeader6(Guest6, Outside, IpProtocol.Tcp, 20 + data.Length)));
        _gw.Receive(frame, 1);
        Assert.Equal(0, c.Peek().Length); // untrusted, the partial checksum is a bad one
        Assert.Equal(1, _gw.Counters.BadChecksum);

        _gw.Receive(frame, 2, checksumsTrusted: true);
        Assert.Equal(data, c.Peek().ToArray());
        _gw.OnTimer(100); // the delayed ACK, at the latest
        byte[] ack = _sink.Take().Last(f => f[14 + 6] == IpProtocol.Tcp);
        Assert.Equal((byte)TcpFlags.Ack, ack[54 + 13]);
        Assert.Equal(1001u + 60_000, BinaryPrimitives.ReadUInt32BigEndian(ack.AsSpan(54 + 8)));
    }

    // ---- publishing to the guest's IPv6 address and DNS over TCP (issue 18, items 4 and 5) ----

    /// <summary>fd00:6b69:7400:: and the modified EUI-64 of the test guest's MAC 02:00:00:00:00:03 (RFC 4291 App. A).</summary>
    private static readonly UInt128 GuestEui64 = Ip6.Parse("fd00:6b69:7400::ff:fe00:3");

    private sealed class RecordingPublishes(ushort pseudoPort) : IUdp6Replies
    {
        public List<Udp6Flow> Delivered { get; } = [];

        public bool TryDeliver(in Udp6Flow flow, ReadOnlySpan<byte> payload)
        {
            if (flow.RemotePort != pseudoPort)
            {
                return false;
            }
            Delivered.Add(flow);
            return true;
        }
    }

    [Fact]
    public void AGuestsDadTeachesItsAddressAndAPublishOpensToItFromTheHostAlias()
    {
        Assert.Equal((IpAddr.V4(G.Guest), IpAddr.V4(G.Host)), _gw.PublishTarget(preferIpv6: true)); // nothing known yet
        // RFC 4862 §5.4.2: the guest's DAD for the address SLAAC gave it; it has sent nothing from it yet.
        _gw.Receive(Ns(UInt128.Zero, Guest6, unspecified: true), 0);
        Assert.Empty(_sink.Take());
        Assert.Equal((IpAddr.V6(Guest6), IpAddr.V6(Host6)), _gw.PublishTarget(preferIpv6: true));
        Assert.Equal((IpAddr.V4(G.Guest), IpAddr.V4(G.Host)), _gw.PublishTarget(preferIpv6: false)); // 127.0.0.1 stays IPv4

        TcpSocket c = _gw.OpenToGuest(IpAddr.V6(Guest6), 8080, IpAddr.V6(Host6), 1)!;
        byte[] frame = Assert.Single(_sink.Take());
        Assert.Equal(G.GuestMac, MacAddress.Read(frame)); // the DAD's MAC: no Neighbor Solicitation first
        Out syn = Decode(frame);
        Assert.Equal((Host6, Guest6, IpProtocol.Tcp), (syn.Src, syn.Dst, syn.NextHeader));
        Assert.Equal(8080, BinaryPrimitives.ReadUInt16BigEndian(syn.Upper.AsSpan(2)));
        Assert.Equal((byte)TcpFlags.Syn, syn.Upper[13]);
        ushort port = BinaryPrimitives.ReadUInt16BigEndian(syn.Upper);
        uint iss = BinaryPrimitives.ReadUInt32BigEndian(syn.Upper.AsSpan(4));
        _gw.Receive(Tcp(Guest6, Host6, 8080, port, 5000, iss + 1, TcpFlags.Syn | TcpFlags.Ack, []), 2);
        Assert.Equal(TcpState.Established, c.State);
        Assert.Same(c, Assert.Single(_flows.Established));
    }

    [Fact]
    public void AnAnnouncedEui64AddressIsPreferredOverTheMostRecentSource()
    {
        _gw.Receive(Echo(Guest6, Gw6, 1, 1, []), 0);
        Assert.Equal(IpAddr.V6(Guest6), _gw.PublishTarget(true).Guest);
        byte[] na = new byte[32];
        Ndp.WriteNeighborAdvertisement(na, GuestEui64, G.GuestMac, router: false, solicited: false, @override: true);
        _gw.Receive(Icmp(GuestLl, Ip6.AllNodes, na), 2_000); // RFC 4861 §7.2.6: unsolicited
        _gw.Receive(Echo(Guest6, Gw6, 1, 2, []), 4_000); // the other address used since: EUI-64 still wins
        _sink.Take();
        Assert.Equal(IpAddr.V6(GuestEui64), _gw.PublishTarget(true).Guest);
    }

    [Fact]
    public void SpoofedAndLinkLocalSourcesAreNotPublishedToAndIpv6OffMeansIpv4()
    {
        _gw.Receive(Echo(Ip6.Parse("2001:db8::5"), Gw6, 1, 1, []), 0); // outside the prefix: dropped as spoofed
        _gw.Receive(Echo(GuestLl, GwLl, 1, 1, []), 0); // link-local: a neighbour, not a published-to address
        _gw.Receive(Ns(UInt128.Zero, Ip6.Parse("fe80::1:2"), unspecified: true), 0);
        _gw.Receive(Ns(UInt128.Zero, Ip6.Parse("2001:db8::9"), unspecified: true), 0);
        Assert.Equal(IpAddr.V4(G.Guest), _gw.PublishTarget(true).Guest);
        Assert.Equal(1, _gw.Counters.Ipv6Spoofed);

        _gw = NewGateway(new GatewayOptions { Ipv6 = false });
        _gw.Receive(Ns(UInt128.Zero, Guest6, unspecified: true), 0);
        Assert.Equal((IpAddr.V4(G.Guest), IpAddr.V4(G.Host)), _gw.PublishTarget(true));
    }

    [Fact]
    public void ThePublishedGuestIsTheHolderOfTheFirstGuestAddress()
    {
        _gw.Receive(Ns(UInt128.Zero, Guest6, unspecified: true), 0);
        // 192.168.65.3 is another MAC's (ARP), and that guest has no IPv6 address: IPv4 it is.
        _gw.Receive(G.ArpRequest(G.Gateway, mac: MacAddress.Parse("02:00:00:00:00:99")), 1);
        _sink.Take();
        Assert.Equal(IpAddr.V4(G.Guest), _gw.PublishTarget(true).Guest);
        _gw.Receive(G.ArpRequest(G.Gateway), 2);
        Assert.Equal(IpAddr.V6(Guest6), _gw.PublishTarget(true).Guest);
    }

    [Fact]
    public void GuestRepliesToAPortPublishedOnIpv6GoToThePublisherAndOtherDatagramsToTheNat()
    {
        var published = new RecordingPublishes(61000);
        _gw.PublishedUdp6 = published;
        _gw.Receive(Udp(Guest6, Host6, 9999, 61000, [1]), 0);
        _gw.Receive(Udp(Guest6, Host6, 9999, 5000, [2]), 0);
        Assert.Equal([new Udp6Flow(Guest6, 9999, Host6, 61000)], published.Delivered);
        Assert.Equal([new Udp6Flow(Guest6, 9999, Host6, 5000)], _flows.Udp6.Select(u => u.Flow));
        Assert.Empty(_sink.Take());
    }

    [Theory]
    [InlineData("fd00:6b69:7400::1", "fd00:6b69:7400::1234")]
    [InlineData("fe80::f416:36ff:febc:f9c6", "fe80::ff:fe00:3")]
    public void TcpToTheGatewaysIpv6Port53GoesToTheNatAndItsOtherPortsAreRefused(string gateway, string guest)
    {
        UInt128 to = Ip6.Parse(gateway), from = Ip6.Parse(guest);
        _gw.Receive(Syn(from, to, 53, 100), 0);
        TcpSocket c = Assert.Single(_flows.ConnectRequests);
        Assert.Equal((IpAddr.V6(to), (ushort)53), (c.RemoteIp, c.RemotePort));
        Assert.Empty(_sink.Take()); // connect-before-accept, as for any flow
        _gw.Receive(Syn(from, to, 80, 200, srcPort: 40001), 1);
        Assert.Single(_flows.ConnectRequests);
        Out rst = Single();
        Assert.Equal((byte)(TcpFlags.Rst | TcpFlags.Ack), rst.Upper[13]);
    }
}
