using System.Buffers.Binary;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>Records everything the engine emits.</summary>
internal sealed class CapturingSink : IFrameSink
{
    public List<byte[]> Frames { get; } = [];

    public void Send(ReadOnlySpan<byte> frame) => Frames.Add(frame.ToArray());

    public List<int> SegmentSizes { get; } = [];

    public void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize)
    {
        Frames.Add(frame.ToArray());
        SegmentSizes.Add(segmentSize);
    }

    public List<byte[]> Take()
    {
        var f = new List<byte[]>(Frames);
        Frames.Clear();
        return f;
    }
}

/// <summary>A NAT stand-in: records requests; connects succeed or fail as told.</summary>
internal sealed class RecordingFlows : IFlowHandler
{
    public List<TcpSocket> ConnectRequests { get; } = [];
    public List<TcpSocket> Established { get; } = [];
    public List<TcpSocket> Resets { get; } = [];
    public int Readable;
    public int Writable;
    public List<(UdpFlow Flow, byte[] Payload)> Udp { get; } = [];
    public List<(uint Dst, ushort Id, ushort Seq)> Pings { get; } = [];

    public void TcpConnectRequested(TcpSocket connection) => ConnectRequests.Add(connection);
    public void TcpEstablished(TcpSocket connection) => Established.Add(connection);
    public void TcpReadable(TcpSocket connection) => Readable++;
    public void TcpWritable(TcpSocket connection) => Writable++;
    public void TcpReset(TcpSocket connection) => Resets.Add(connection);

    public FlowVerdict UdpReceived(in UdpFlow flow, ReadOnlySpan<byte> payload)
    {
        Udp.Add((flow, payload.ToArray()));
        return Verdict;
    }

    public FlowVerdict IcmpEchoRequested(uint guestIp, uint destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload)
    {
        Pings.Add((destination, id, sequence));
        return Verdict;
    }

    public List<(Udp6Flow Flow, byte[] Payload)> Udp6 { get; } = [];
    public List<(UInt128 Dst, ushort Id, ushort Seq)> Pings6 { get; } = [];

    public FlowVerdict Udp6Received(in Udp6Flow flow, ReadOnlySpan<byte> payload)
    {
        Udp6.Add((flow, payload.ToArray()));
        return Verdict;
    }

    public FlowVerdict Icmp6EchoRequested(UInt128 guestIp, UInt128 destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload)
    {
        Pings6.Add((destination, id, sequence));
        return Verdict;
    }

    /// <summary>What the fake host side answers for datagrams and echoes (a reject rule: <see cref="FlowVerdict.Rejected"/>).</summary>
    public FlowVerdict Verdict { get; set; }
}

/// <summary>A decoded TCP segment the engine sent.</summary>
internal sealed record Seg(uint Src, ushort SrcPort, uint Dst, ushort DstPort, uint Seq, uint Ack, TcpFlags Flags, ushort Window, TcpOptions Options, byte[] Payload)
{
    /// <summary>The raw option bytes (the SACK option is not part of <see cref="TcpOptions"/>).</summary>
    public byte[] OptionBytes { get; init; } = [];
}

/// <summary>Builds guest frames by hand and decodes the gateway's answers.</summary>
internal static class G
{
    public static readonly MacAddress GuestMac = MacAddress.Parse("02:00:00:00:00:03");
    public static readonly MacAddress GatewayMac = MacAddress.Parse("f6:16:36:bc:f9:c6");
    public static readonly uint Gateway = Ip4.Parse("192.168.65.1");
    public static readonly uint Host = Ip4.Parse("192.168.65.2");
    public static readonly uint Guest = Ip4.Parse("192.168.65.3");
    public static readonly uint Remote = Ip4.Parse("10.1.2.3");

    public static byte[] Ip(uint src, uint dst, byte proto, ReadOnlySpan<byte> l4, MacAddress? dstMac = null)
    {
        byte[] f = new byte[14 + 20 + l4.Length];
        EthernetFrame.Write(f, dstMac ?? GatewayMac, GuestMac, EtherType.Ipv4);
        l4.CopyTo(f.AsSpan(34));
        Ipv4Packet.Write(f.AsSpan(14), 20 + l4.Length, 1, 64, proto, src, dst);
        return f;
    }

    public static byte[] Tcp(uint dst, ushort srcPort, ushort dstPort, uint seq, uint ack, TcpFlags flags, ushort window = 65535,
        byte[]? payload = null, TcpOptions? options = null, uint src = 0, byte[]? rawOptions = null)
    {
        src = src == 0 ? Guest : src;
        payload ??= [];
        byte[] opt = rawOptions ?? new byte[TcpOptions.MaxLength];
        int olen = rawOptions?.Length ?? options?.Write(opt) ?? 0;
        int hl = TcpSegment.HeaderLengthFor(olen);
        byte[] seg = new byte[hl + payload.Length];
        opt.AsSpan(0, olen).CopyTo(seg.AsSpan(20));
        payload.CopyTo(seg, hl);
        TcpSegment.Write(seg, hl, srcPort, dstPort, seq, ack, flags, window, src, dst);
        return Ip(src, dst, IpProtocol.Tcp, seg);
    }

    public static byte[] Udp(uint dst, ushort srcPort, ushort dstPort, byte[] payload, uint src = 0, MacAddress? dstMac = null)
    {
        src = src == 0 ? Guest : src;
        byte[] d = new byte[8 + payload.Length];
        payload.CopyTo(d, 8);
        UdpDatagram.Write(d, srcPort, dstPort, src, dst);
        return Ip(src, dst, IpProtocol.Udp, d, dstMac);
    }

    public static byte[] Ping(uint dst, ushort id, ushort seq, byte[] data)
    {
        byte[] m = new byte[8 + data.Length];
        data.CopyTo(m, 8);
        IcmpPacket.WriteEcho(m, IcmpPacket.TypeEchoRequest, id, seq);
        return Ip(Guest, dst, IpProtocol.Icmp, m);
    }

    public static byte[] ArpRequest(uint target, uint sender = 0, MacAddress? mac = null)
    {
        byte[] f = new byte[42];
        EthernetFrame.Write(f, MacAddress.Broadcast, mac ?? GuestMac, EtherType.Arp);
        ArpPacket.Write(f.AsSpan(14), ArpPacket.OpRequest, mac ?? GuestMac, sender == 0 ? Guest : sender, MacAddress.Zero, target);
        return f;
    }

    public static Seg? DecodeTcp(byte[] frame)
    {
        if (!EthernetFrame.TryParse(frame, out EthernetFrame e) || e.EtherType != EtherType.Ipv4)
        {
            return null;
        }
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(e.Payload, out Ipv4Packet ip));
        if (ip.Protocol != IpProtocol.Tcp)
        {
            return null;
        }
        Assert.True(TcpSegment.TryParse(ip.Payload, out TcpSegment s));
        // Finished, or (an offloading gateway's) partial: the folded pseudo-header sum for the link to finish.
        Assert.True(s.ChecksumValid(ip.Source, ip.Destination)
            || s.Checksum == (ushort)~Checksum.Finish(Checksum.PseudoHeader(ip.Source, ip.Destination, IpProtocol.Tcp, ip.Payload.Length)));
        return new Seg(ip.Source, s.SourcePort, ip.Destination, s.DestinationPort, s.Sequence, s.Acknowledgment, s.Flags, s.Window, s.Options, s.Payload.ToArray())
        {
            OptionBytes = s.OptionBytes.ToArray(),
        };
    }

    public static List<Seg> Segments(CapturingSink sink) => sink.Take().Select(DecodeTcp).Where(s => s is not null).Select(s => s!).ToList();

    public static byte[] Dhcp(byte type, uint xid, MacAddress mac, uint requested = 0, uint server = 0)
    {
        byte[] p = new byte[300];
        p[0] = 1;
        p[1] = 1;
        p[2] = 6;
        BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(4), xid);
        mac.Write(p.AsSpan(28));
        BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(236), DhcpMessage.MagicCookie);
        int i = 240;
        p[i++] = 53;
        p[i++] = 1;
        p[i++] = type;
        if (requested != 0)
        {
            p[i++] = 50;
            p[i++] = 4;
            BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(i), requested);
            i += 4;
        }
        if (server != 0)
        {
            p[i++] = 54;
            p[i++] = 4;
            BinaryPrimitives.WriteUInt32BigEndian(p.AsSpan(i), server);
            i += 4;
        }
        p[i] = 255;
        return Udp(uint.MaxValue, 68, 67, p, src: 0xFFFFFFFF, dstMac: MacAddress.Broadcast) is var f ? FixSource(f) : [];
    }

    // DHCP clients send from 0.0.0.0; rebuild the IPv4 and UDP headers with that source.
    private static byte[] FixSource(byte[] f)
    {
        Span<byte> ip = f.AsSpan(14);
        Span<byte> udp = ip.Slice(20);
        UdpDatagram.Write(udp, 68, 67, 0, uint.MaxValue);
        Ipv4Packet.Write(ip, ip.Length, 1, 64, IpProtocol.Udp, 0, uint.MaxValue);
        return f;
    }
}
