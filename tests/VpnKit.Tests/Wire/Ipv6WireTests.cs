using System.Buffers.Binary;
using System.Diagnostics;
using Kit.VpnKit.Capture;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Wire;

/// <summary>
/// The IPv6 wire views (issue 18, item 1): the fixed header, extension chains walked with a bound, ICMPv6 with its
/// pseudo-header checksum, Neighbor Discovery and stateless DHCPv6. What the writers produce is dissected by tshark,
/// a real decoder with its own checksum verification.
/// </summary>
public sealed class Ipv6WireTests : IDisposable
{
    private static readonly UInt128 Gateway = Ip6.Parse("fe80::1");
    private static readonly UInt128 Guest = Ip6.Parse("fd00:6b69:7400::3");
    private static readonly MacAddress GatewayMac = new(0xF6_16_36_BC_F9_C6UL);
    private static readonly MacAddress GuestMac = new(0x02_00_00_00_00_03UL);
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-ipv6-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static byte[] Packet(byte nextHeader, ReadOnlySpan<byte> payload, UInt128 src, UInt128 dst, byte hopLimit = 255)
    {
        byte[] p = new byte[Ipv6Packet.HeaderLength + payload.Length];
        Ipv6Packet.Write(p, payload.Length, nextHeader, hopLimit, src, dst);
        payload.CopyTo(p.AsSpan(Ipv6Packet.HeaderLength));
        return p;
    }

    private static byte[] Frame(MacAddress dst, MacAddress src, byte[] ipv6)
    {
        byte[] f = new byte[EthernetFrame.HeaderLength + ipv6.Length];
        EthernetFrame.Write(f, dst, src, EtherType.Ipv6);
        ipv6.CopyTo(f, EthernetFrame.HeaderLength);
        return f;
    }

    [Fact]
    public void FixedHeaderRoundTripsAndPaddingIsExcluded()
    {
        byte[] p = Packet(17, new byte[12], Guest, Gateway, hopLimit: 64);
        byte[] padded = [.. p, 0, 0, 0, 0];
        Assert.Equal(Ipv6Error.None, Ipv6Packet.TryParse(padded, out Ipv6Packet ip));
        Assert.Equal(12, ip.PayloadLength);
        Assert.Equal(17, ip.NextHeader);
        Assert.Equal(64, ip.HopLimit);
        Assert.Equal(Guest, ip.Source);
        Assert.Equal("fe80::1", Ip6.Format(ip.Destination));
    }

    [Fact]
    public void BadFixedHeadersAreRefusedByReason()
    {
        byte[] p = Packet(17, new byte[12], Guest, Gateway);
        Assert.Equal(Ipv6Error.TooShort, Ipv6Packet.TryParse(p.AsSpan(0, 39), out _));
        byte[] v4 = (byte[])p.Clone();
        v4[0] = 0x45;
        Assert.Equal(Ipv6Error.NotVersion6, Ipv6Packet.TryParse(v4, out _));
        Assert.Equal(Ipv6Error.BadPayloadLength, Ipv6Packet.TryParse(p.AsSpan(0, 50), out _));
        // Payload length 0 with a Hop-by-Hop header: a jumbogram (RFC 2675), which no link here carries.
        byte[] jumbo = Packet(0, new byte[8], Guest, Gateway);
        jumbo[4] = jumbo[5] = 0;
        Assert.Equal(Ipv6Error.Jumbogram, Ipv6Packet.TryParse(jumbo, out _));
        // Zero-length payload without one: an empty packet, valid.
        Assert.Equal(Ipv6Error.None, Ipv6Packet.TryParse(Packet(59, [], Guest, Gateway), out Ipv6Packet empty));
        Assert.Equal(0, empty.PayloadLength);
    }

    [Fact]
    public void ExtensionChainIsWalkedToTheUpperLayerWithTheFragmentHeader()
    {
        // Hop-by-Hop (8), Destination Options (16), Fragment (offset 1448, M), then UDP.
        byte[] payload = new byte[8 + 16 + 8 + 8];
        payload[0] = Ipv6ExtensionChain.DestinationOptions;
        payload[8] = Ipv6ExtensionChain.Fragment;
        payload[9] = 1;
        payload[24] = 17;
        BinaryPrimitives.WriteUInt16BigEndian(payload.AsSpan(26), (ushort)((1448 / 8) << 3 | 1));
        BinaryPrimitives.WriteUInt32BigEndian(payload.AsSpan(28), 0xDEADBEEF);
        Assert.Equal(Ipv6Error.None, Ipv6ExtensionChain.TryFindUpperLayer(payload, Ipv6ExtensionChain.HopByHop, out byte proto, out int offset, out Ipv6Fragment? frag));
        Assert.Equal(17, proto);
        Assert.Equal(32, offset);
        Assert.Equal(new Ipv6Fragment(0xDEADBEEF, 1448, true, 24), frag);
    }

    [Fact]
    public void TenThousandDeepChainsStopAtTheBoundAndMisplacedOrCutHeadersAreRefused()
    {
        // 10,000 empty Destination Options headers, each pointing at the next.
        byte[] deep = new byte[10_000 * 8];
        for (int i = 0; i < 10_000; i++)
        {
            deep[i * 8] = Ipv6ExtensionChain.DestinationOptions;
        }
        Assert.Equal(Ipv6Error.TooManyExtensionHeaders, Ipv6ExtensionChain.TryFindUpperLayer(deep, Ipv6ExtensionChain.DestinationOptions, out _, out _, out _));
        // Hop-by-Hop anywhere but first (RFC 8200 §4.1).
        byte[] late = new byte[16];
        late[0] = Ipv6ExtensionChain.HopByHop;
        Assert.Equal(Ipv6Error.BadExtensionHeader, Ipv6ExtensionChain.TryFindUpperLayer(late, Ipv6ExtensionChain.Routing, out _, out _, out _));
        // A header whose length runs past the packet.
        byte[] cut = new byte[8];
        cut[1] = 200;
        Assert.Equal(Ipv6Error.BadExtensionHeader, Ipv6ExtensionChain.TryFindUpperLayer(cut, Ipv6ExtensionChain.Routing, out _, out _, out _));
        Assert.Equal(Ipv6Error.BadExtensionHeader, Ipv6ExtensionChain.TryFindUpperLayer(new byte[4], Ipv6ExtensionChain.Fragment, out _, out _, out _));
    }

    [Fact]
    public void RandomChainsNeverThrow()
    {
        var random = new Random(18);
        byte[] buffer = new byte[256];
        for (int i = 0; i < 100_000; i++)
        {
            random.NextBytes(buffer);
            Span<byte> p = buffer.AsSpan(0, random.Next(buffer.Length));
            _ = Ipv6ExtensionChain.TryFindUpperLayer(p, (byte)random.Next(4) switch { 0 => 0, 1 => 43, 2 => 44, _ => 60 }, out _, out _, out _);
            _ = Ipv6Packet.TryParse(p, out _);
            if (p.Length > 0)
            {
                _ = Ndp.IsValid(p, 255);
            }
            _ = Dhcpv6Message.TryParse(p, out _);
        }
    }

    [Fact]
    public void NdpOptionsWithZeroLengthMakeTheMessageInvalid()
    {
        byte[] ns = new byte[32];
        Ndp.WriteNeighborSolicitation(ns, Gateway, GuestMac);
        Assert.True(Ndp.IsValid(ns, 255));
        Assert.False(Ndp.IsValid(ns, 64)); // forwarded: not from the link (RFC 4861 §7.1.1)
        Assert.True(Ndp.TryGetLinkLayerAddress(ns, NdpOption.SourceLinkLayerAddress, out MacAddress mac));
        Assert.Equal(GuestMac, mac);
        ns[25] = 0; // the option's length
        Assert.False(Ndp.IsValid(ns, 255));
        Assert.False(Ndp.IsValid(ns.AsSpan(0, 30), 255)); // an option cut short
    }

    [Fact]
    public void TsharkDecodesWhatTheWritersProduce()
    {
        string pcap = Path.Combine(_dir, "v6.pcap");
        UInt128 prefix = Ip6.Parse("fd00:6b69:7400::");
        using (var writer = new PcapWriter(File.Create(pcap)))
        {
            // Router Advertisement: prefix (SLAAC), MTU, RDNSS, DNSSL, source link-layer address.
            byte[] ra = new byte[256];
            int n = Ndp.WriteRouterAdvertisement(ra, 64, managed: false, other: true, routerLifetime: 1800);
            n += Ndp.WriteLinkLayerOption(ra.AsSpan(n), NdpOption.SourceLinkLayerAddress, GatewayMac);
            n += Ndp.WriteMtuOption(ra.AsSpan(n), 1500);
            n += Ndp.WritePrefixOption(ra.AsSpan(n), prefix, 64, onLink: true, autonomous: true, 86400, 14400);
            n += Ndp.WriteRdnssOption(ra.AsSpan(n), 1800, [Ip6.Parse("fd00:6b69:7400::1")]);
            n += Ndp.WriteDnsslOption(ra.AsSpan(n), 1800, ["corp.test", "lab.corp.test"]);
            UInt128 allNodes = Ip6.Parse("ff02::1");
            Icmpv6Message.WriteChecksum(ra.AsSpan(0, n), Gateway, allNodes);
            writer.Write(Frame(Ip6.MulticastMac(allNodes), GatewayMac, Packet(58, ra.AsSpan(0, n), Gateway, allNodes)));

            // Neighbor Advertisement for the gateway's address, solicited.
            byte[] na = new byte[32];
            Ndp.WriteNeighborAdvertisement(na, Gateway, GatewayMac, router: true, solicited: true, @override: true);
            Icmpv6Message.WriteChecksum(na, Gateway, Guest);
            writer.Write(Frame(GuestMac, GatewayMac, Packet(58, na, Gateway, Guest)));

            // DHCPv6 Reply in UDP 547 -> 546, checksum over the IPv6 pseudo-header.
            byte[] udp = new byte[8 + 200];
            int m = Dhcpv6Message.WriteReply(udp.AsSpan(8), 0x123456, [0, 3, 0, 1, 2, 0, 0, 0, 0, 3], GatewayMac, [Ip6.Parse("fd00:6b69:7400::1")], ["corp.test"]);
            int ul = 8 + m;
            BinaryPrimitives.WriteUInt16BigEndian(udp, Dhcpv6.ServerPort);
            BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), Dhcpv6.ClientPort);
            BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)ul);
            ushort sum = Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(Gateway, Guest, 17, ul), udp.AsSpan(0, ul)));
            BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(6), sum);
            writer.Write(Frame(GuestMac, GatewayMac, Packet(17, udp.AsSpan(0, ul), Gateway, Guest)));
        }
        string fields = Tshark(pcap, "-o", "udp.check_checksum:TRUE", "-T", "fields", "-E", "separator=|",
            "-e", "icmpv6.type", "-e", "icmpv6.checksum.status", "-e", "icmpv6.opt.prefix", "-e", "icmpv6.opt.rdnss",
            "-e", "icmpv6.opt.dnssl", "-e", "icmpv6.opt.mtu", "-e", "icmpv6.nd.na.target_address", "-e", "udp.checksum.status",
            "-e", "dhcpv6.msgtype", "-e", "dhcpv6.dns_server", "-e", "dhcpv6.search_list_entry");
        string[] lines = fields.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 3, fields);
        Assert.StartsWith("134|1|fd00:6b69:7400::|fd00:6b69:7400::1|corp.test,lab.corp.test|1500|", lines[0]);
        Assert.StartsWith("136|1|||||fe80::1|", lines[1]);
        Assert.EndsWith("|1|7|fd00:6b69:7400::1|corp.test.", lines[2]); // tshark shows the root label
    }

    private static string Tshark(string pcap, params string[] args)
    {
        var start = new ProcessStartInfo("tshark") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in (string[])["-n", "-r", pcap, .. args])
        {
            start.ArgumentList.Add(a);
        }
        using Process p = Process.Start(start)!;
        string output = p.StandardOutput.ReadToEnd();
        string error = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "tshark did not finish");
        Assert.True(p.ExitCode == 0, error);
        return output;
    }
}
