using System.Buffers.Binary;
using CsCheck;
using Kit.VpnKit.Wire;
using PacketDotNet;
using ArpPacket = Kit.VpnKit.Wire.ArpPacket;

namespace Kit.VpnKit.Tests.Wire;

public sealed class ParserTests
{
    private static readonly uint Gw = Ip4.Parse("192.168.65.1");
    private static readonly uint Guest = Ip4.Parse("192.168.65.3");

    [Fact]
    public void EthernetAndArpGolden()
    {
        byte[] f = Convert.FromHexString(
            "ffffffffffff" + "020000000003" + "0806" +
            "0001080006040001" + "020000000003" + "c0a84103" + "000000000000" + "c0a84101");
        Assert.True(EthernetFrame.TryParse(f, out EthernetFrame e));
        Assert.Equal(MacAddress.Broadcast, e.Destination);
        Assert.Equal(MacAddress.Parse("02:00:00:00:00:03"), e.Source);
        Assert.Equal(EtherType.Arp, e.EtherType);
        Assert.True(ArpPacket.TryParse(e.Payload, out ArpPacket a));
        Assert.Equal(ArpPacket.OpRequest, a.Operation);
        Assert.Equal(Guest, a.SenderIp);
        Assert.Equal(Gw, a.TargetIp);

        byte[] round = new byte[42];
        EthernetFrame.Write(round, MacAddress.Broadcast, MacAddress.Parse("02:00:00:00:00:03"), EtherType.Arp);
        ArpPacket.Write(round.AsSpan(14), ArpPacket.OpRequest, MacAddress.Parse("02:00:00:00:00:03"), Guest, MacAddress.Zero, Gw);
        Assert.Equal(f, round);
    }

    [Fact]
    public void Ipv4OptionsAreSkippedAndPaddingExcluded()
    {
        // IHL 6 (one 4-byte option: NOP NOP NOP EOL), total length 28, then 4 bytes of Ethernet padding.
        byte[] p = Convert.FromHexString("4600001c00010000401100000a0000010a000002" + "01010100" + "11112222" + "00000000");
        BinaryPrimitives.WriteUInt16BigEndian(p.AsSpan(10), Checksum.Compute(p.AsSpan(0, 24)));
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(p, out Ipv4Packet ip));
        Assert.Equal(24, ip.HeaderLength);
        Assert.Equal(4, ip.Payload.Length);
        Assert.Equal(0x11, ip.Payload[0]);
        Assert.Equal(IpProtocol.Udp, ip.Protocol);
        p[3] = 0xFF;
        Assert.Equal(Ipv4Error.BadTotalLength, Ipv4Packet.TryParse(p, out _));
    }

    [Fact]
    public void Ipv4RejectsBadChecksumAndVersion()
    {
        byte[] p = Convert.FromHexString("450000140001000040060000c0a84103c0a84101");
        Assert.Equal(Ipv4Error.BadChecksum, Ipv4Packet.TryParse(p, out _));
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(p, out _, verifyChecksum: false));
        p[0] = 0x65;
        Assert.Equal(Ipv4Error.NotVersion4, Ipv4Packet.TryParse(p, out _));
    }

    [Fact]
    public void TcpOptionsRoundTrip()
        => Gen.Select(Gen.UShort, Gen.Int[-1, 14], Gen.Bool, Gen.Bool, Gen.UInt, Gen.UInt).Sample((mss, ws, sack, ts, tv, te) =>
        {
            var o = new TcpOptions { Mss = mss, WindowScale = (sbyte)ws, SackPermitted = sack, HasTimestamps = ts, TsValue = ts ? tv : 0, TsEcho = ts ? te : 0 };
            Span<byte> b = stackalloc byte[TcpOptions.MaxLength];
            int n = o.Write(b);
            TcpOptions r = TcpOptions.Parse(b.Slice(0, n));
            return n % 4 == 0 && r.Mss == mss && r.WindowScale == ws && r.SackPermitted == sack && r.HasTimestamps == ts
                && r.TsValue == o.TsValue && r.TsEcho == o.TsEcho;
        }, iter: 2000);

    [Fact]
    public void TcpOptionsGoldenLinuxSyn()
    {
        // A Linux SYN's options: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
        byte[] o = Convert.FromHexString("020405b40402080a0001e2400000000001030307");
        TcpOptions r = TcpOptions.Parse(o);
        Assert.Equal(1460, r.Mss);
        Assert.True(r.SackPermitted);
        Assert.True(r.HasTimestamps);
        Assert.Equal(0x1e240u, r.TsValue);
        Assert.Equal(7, r.WindowScale);
    }

    [Fact]
    public void EmittedTcpSegmentIsReadByPacketDotNet()
    {
        byte[] frame = new byte[14 + 20 + 20 + 24 + 5];
        EthernetFrame.Write(frame, MacAddress.Parse("02:00:00:00:00:03"), MacAddress.Parse("f6:16:36:bc:f9:c6"), EtherType.Ipv4);
        Span<byte> seg = frame.AsSpan(34);
        var opts = new TcpOptions { Mss = 1460, WindowScale = 7, SackPermitted = false };
        int olen = opts.Write(seg.Slice(20));
        int hl = TcpSegment.HeaderLengthFor(olen);
        "hello"u8.CopyTo(seg.Slice(hl));
        Span<byte> whole = seg.Slice(0, hl + 5);
        TcpSegment.Write(whole, hl, 80, 40000, 1000, 2000, TcpFlags.Syn | TcpFlags.Ack, 65535, Gw, Guest);
        Ipv4Packet.Write(frame.AsSpan(14), 20 + hl + 5, 7, 64, IpProtocol.Tcp, Gw, Guest);
        byte[] exact = frame.AsSpan(0, 34 + hl + 5).ToArray();

        var eth = (EthernetPacket)Packet.ParsePacket(LinkLayers.Ethernet, exact);
        var ip = eth.Extract<IPv4Packet>();
        var tcp = eth.Extract<TcpPacket>();
        Assert.True(ip.ValidIPChecksum);
        Assert.True(tcp.ValidTcpChecksum);
        Assert.Equal(80, tcp.SourcePort);
        Assert.Equal(40000, tcp.DestinationPort);
        Assert.True(tcp.Synchronize && tcp.Acknowledgment);
        Assert.Equal(1000u, tcp.SequenceNumber);
        Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(tcp.PayloadData));

        Assert.True(EthernetFrame.TryParse(exact, out EthernetFrame e));
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(e.Payload, out Ipv4Packet p));
        Assert.True(TcpSegment.TryParse(p.Payload, out TcpSegment s));
        Assert.True(s.ChecksumValid(p.Source, p.Destination));
        Assert.Equal(1460, s.Options.Mss);
        Assert.Equal(7, s.Options.WindowScale);
    }

    [Fact]
    public void EmittedUdpIsReadByPacketDotNet()
    {
        byte[] frame = new byte[14 + 20 + 8 + 3];
        EthernetFrame.Write(frame, MacAddress.Parse("02:00:00:00:00:03"), MacAddress.Parse("f6:16:36:bc:f9:c6"), EtherType.Ipv4);
        "abc"u8.CopyTo(frame.AsSpan(42));
        UdpDatagram.Write(frame.AsSpan(34), 53, 5353, Gw, Guest);
        Ipv4Packet.Write(frame.AsSpan(14), 31, 1, 64, IpProtocol.Udp, Gw, Guest);
        var udp = Packet.ParsePacket(LinkLayers.Ethernet, frame).Extract<UdpPacket>();
        Assert.True(udp.ValidUdpChecksum);
        Assert.Equal(5353, udp.DestinationPort);
        Assert.True(UdpDatagram.TryParse(frame.AsSpan(34), out UdpDatagram d));
        Assert.True(d.ChecksumValid(Gw, Guest));
    }

    [Fact]
    public void DnsQuestionAndTtl()
    {
        // Response to "host.internal A": one answer, TTL 60, name compressed to the question.
        byte[] m = Convert.FromHexString(
            "1234" + "8180" + "0001" + "0001" + "0000" + "0000" +
            "04686f737408696e7465726e616c00" + "0001" + "0001" +
            "c00c" + "0001" + "0001" + "0000003c" + "0004" + "c0a84102");
        Assert.True(DnsMessage.TryParse(m, out DnsMessage d));
        Assert.True(d.IsResponse);
        Assert.True(d.TryReadQuestion(out ReadOnlySpan<byte> name, out ushort type, out _, out int end));
        Assert.True(DnsMessage.NameEquals(name, "Host.Internal"));
        Assert.False(DnsMessage.NameEquals(name, "host.internal.x"));
        Assert.Equal(1, type);
        Assert.Equal(31, end);
        Assert.True(d.TryGetMinimumTtl(out uint ttl));
        Assert.Equal(60u, ttl);
    }

    [Fact]
    public void DhcpRoundTrip()
    {
        byte[] b = new byte[400];
        var w = new DhcpWriter(b, 0xdeadbeef, 0x8000, Guest, Gw, MacAddress.Parse("02:00:00:00:00:03"));
        w.Option(DhcpOption.MessageType, DhcpOption.Offer);
        w.OptionUInt32(DhcpOption.ServerId, Gw);
        int n = w.Finish();
        Assert.True(DhcpMessage.TryParse(b.AsSpan(0, n), out DhcpMessage d));
        Assert.Equal(0xdeadbeefu, d.TransactionId);
        Assert.Equal(Guest, d.YourIp);
        Assert.Equal(DhcpOption.Offer, d.MessageType);
        Assert.Equal(Gw, d.ServerId);
        Assert.Equal(MacAddress.Parse("02:00:00:00:00:03"), d.ClientMac);
    }

    /// <summary>Arbitrary bytes through every parser and accessor: nothing may throw.</summary>
    [Fact]
    public void ArbitraryInputNeverThrows()
        => Gen.Byte.Array[0, 700].Sample(b =>
        {
            Touch(b);
            // Also with plausible headers so deeper paths are reached.
            if (b.Length > 34)
            {
                b[12] = 0x08;
                b[13] = 0x00;
                b[14] = (byte)(0x40 | (b[14] & 0xF));
                Touch(b);
            }
        }, iter: 20000);

    private static void Touch(byte[] b)
    {
        if (EthernetFrame.TryParse(b, out EthernetFrame e))
        {
            _ = e.Destination;
            _ = e.Source;
            _ = e.EtherType;
            ReadOnlySpan<byte> p = e.Payload;
            if (ArpPacket.TryParse(p, out ArpPacket a))
            {
                _ = a.Operation + a.SenderIp + a.TargetIp;
                _ = a.SenderMac;
            }
            if (Ipv4Packet.TryParse(p, out Ipv4Packet ip, verifyChecksum: false) == Ipv4Error.None)
            {
                _ = ip.Options.Length + ip.FragmentOffset + ip.Source + ip.Destination;
                ReadOnlySpan<byte> t = ip.Payload;
                if (TcpSegment.TryParse(t, out TcpSegment s))
                {
                    _ = s.Options;
                    _ = s.Payload.Length + s.Sequence + s.Acknowledgment;
                    _ = s.ChecksumValid(ip.Source, ip.Destination);
                }
                if (UdpDatagram.TryParse(t, out UdpDatagram u))
                {
                    _ = u.ChecksumValid(1, 2);
                    if (DhcpMessage.TryParse(u.Payload, out DhcpMessage d))
                    {
                        _ = d.MessageType + d.RequestedIp + d.ServerId;
                    }
                    if (DnsMessage.TryParse(u.Payload, out DnsMessage m))
                    {
                        _ = m.TryReadQuestion(out ReadOnlySpan<byte> n, out _, out _, out _) && DnsMessage.NameEquals(n, "host.internal");
                        _ = m.TryGetMinimumTtl(out _);
                    }
                }
                if (IcmpPacket.TryParse(t, out IcmpPacket c))
                {
                    _ = c.ChecksumValid;
                    _ = c.Identifier + c.Sequence;
                }
            }
        }
        TcpOptions.Parse(b);
        if (DhcpMessage.TryParse(b, out DhcpMessage dd))
        {
            _ = dd.MessageType;
        }
        if (DnsMessage.TryParse(b, out DnsMessage dm))
        {
            _ = dm.TryGetMinimumTtl(out _);
            _ = dm.TryReadQuestion(out _, out _, out _, out _);
        }
    }
}
