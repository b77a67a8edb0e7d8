using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using PacketDotNet;
using ArpPacket = Kit.VpnKit.Wire.ArpPacket;

namespace Kit.VpnKit.Tests.Stack;

public sealed class GatewayTests
{
    private readonly CapturingSink _sink = new();
    private readonly RecordingFlows _flows = new();
    private readonly Gateway _gw;
    private long _now = 1000;

    public GatewayTests() => _gw = new Gateway(new GatewayOptions { IsnSecret = 42, SearchDomains = ["example.test"] }, _sink, _flows);

    [Fact]
    public void AnswersArpForGatewayAndHostOnly()
    {
        _gw.Receive(G.ArpRequest(G.Gateway), _now);
        _gw.Receive(G.ArpRequest(G.Host), _now);
        _gw.Receive(G.ArpRequest(Ip4.Parse("192.168.65.77")), _now);
        List<byte[]> out1 = _sink.Take();
        Assert.Equal(2, out1.Count);
        Assert.True(EthernetFrame.TryParse(out1[0], out EthernetFrame e));
        Assert.Equal(G.GuestMac, e.Destination);
        Assert.True(ArpPacket.TryParse(e.Payload, out ArpPacket a));
        Assert.Equal(ArpPacket.OpReply, a.Operation);
        Assert.Equal(G.GatewayMac, a.SenderMac);
        Assert.Equal(G.Gateway, a.SenderIp);
        Assert.Equal(G.Guest, a.TargetIp);
        var arp = Packet.ParsePacket(LinkLayers.Ethernet, out1[1]).Extract<PacketDotNet.ArpPacket>();
        Assert.Equal("192.168.65.2", arp.SenderProtocolAddress.ToString());
    }

    [Fact]
    public void AnswersPingToGatewayAndForwardsOthers()
    {
        _gw.Receive(G.Ping(G.Gateway, 7, 1, "abcdefgh"u8.ToArray()), _now);
        byte[] reply = Assert.Single(_sink.Take());
        var icmp = Packet.ParsePacket(LinkLayers.Ethernet, reply).Extract<IcmpV4Packet>();
        Assert.Equal(IcmpV4TypeCode.EchoReply, icmp.TypeCode);
        Assert.Equal(7, icmp.Id);
        Assert.Equal("abcdefgh", System.Text.Encoding.ASCII.GetString(icmp.Data));
        Assert.True(icmp.ValidIcmpChecksum);
        _gw.Receive(G.Ping(G.Remote, 8, 2, [1, 2]), _now);
        Assert.Empty(_sink.Take());
        Assert.Equal((G.Remote, (ushort)8, (ushort)2), Assert.Single(_flows.Pings));
    }

    [Fact]
    public void ADatagramOrEchoTheNatRejectsGetsAnAdministrativelyProhibitedUnreachable()
    {
        _flows.Verdict = FlowVerdict.Rejected;
        byte[] sent = G.Udp(G.Remote, 40000, 53, "a query"u8.ToArray());
        _gw.Receive(sent, _now);
        byte[] reply = Assert.Single(_sink.Take());
        var ip = Packet.ParsePacket(LinkLayers.Ethernet, reply).Extract<IPv4Packet>();
        Assert.Equal(("192.168.65.1", "192.168.65.3"), (ip.SourceAddress.ToString(), ip.DestinationAddress.ToString()));
        Assert.True(ip.ValidIPChecksum);
        var icmp = Packet.ParsePacket(LinkLayers.Ethernet, reply).Extract<IcmpV4Packet>();
        Assert.True(icmp.ValidIcmpChecksum);
        // RFC 792: type 3, code 13 (RFC 1812 §5.2.7.1), an unused word, then the datagram as it came.
        Assert.Equal((3, 13), (reply[34], reply[35]));
        Assert.Equal(sent[14..], reply[42..]);

        _gw.Receive(G.Ping(G.Remote, 8, 2, [1, 2]), _now);
        byte[] echo = Assert.Single(_sink.Take());
        Assert.Equal((3, 13), (echo[34], echo[35]));

        // A flood of rejected datagrams gets a bounded burst of answers (the gateway's error rate limit).
        for (int i = 0; i < 100; i++)
        {
            _gw.Receive(sent, _now);
        }
        Assert.InRange(_sink.Take().Count, 1, 20);

        // Dropped by the NAT without a word (deny, loss): nothing comes back.
        _flows.Verdict = FlowVerdict.Taken;
        _gw.Receive(sent, _now + 10_000);
        Assert.Empty(_sink.Take());
    }

    [Fact]
    public void DhcpLeaseIsStablePerMacWithOptions()
    {
        MacAddress a = G.GuestMac;
        MacAddress b = MacAddress.Parse("02:00:00:00:00:99");
        _gw.Receive(G.Dhcp(DhcpOption.Discover, 1, a), _now);
        var offer = UdpOf(Assert.Single(_sink.Take()));
        Assert.True(DhcpMessage.TryParse(offer, out DhcpMessage o));
        Assert.Equal(DhcpOption.Offer, o.MessageType);
        Assert.Equal(G.Guest, o.YourIp);
        Assert.True(o.TryGetOption(DhcpOption.Router, out ReadOnlySpan<byte> router));
        Assert.Equal(new byte[] { 192, 168, 65, 1 }, router.ToArray());
        Assert.True(o.TryGetOption(DhcpOption.DnsServers, out ReadOnlySpan<byte> dns));
        Assert.Equal(new byte[] { 192, 168, 65, 1 }, dns.ToArray());
        Assert.True(o.TryGetOption(DhcpOption.SubnetMask, out ReadOnlySpan<byte> mask));
        Assert.Equal(new byte[] { 255, 255, 255, 0 }, mask.ToArray());
        Assert.True(o.TryGetOption(DhcpOption.InterfaceMtu, out ReadOnlySpan<byte> mtu));
        Assert.Equal(new byte[] { 0x05, 0xDC }, mtu.ToArray());
        Assert.True(o.TryGetOption(DhcpOption.DomainSearch, out ReadOnlySpan<byte> search));
        Assert.Equal("\u0007example\u0004test\0", System.Text.Encoding.ASCII.GetString(search));

        _gw.Receive(G.Dhcp(DhcpOption.Request, 2, a, requested: G.Guest, server: G.Gateway), _now);
        var ack = UdpOf(Assert.Single(_sink.Take()));
        Assert.True(DhcpMessage.TryParse(ack, out DhcpMessage k));
        Assert.Equal(DhcpOption.Ack, k.MessageType);

        _gw.Receive(G.Dhcp(DhcpOption.Discover, 3, b), _now);
        var offerB = UdpOf(Assert.Single(_sink.Take()));
        Assert.True(DhcpMessage.TryParse(offerB, out DhcpMessage ob));
        Assert.Equal(Ip4.Parse("192.168.65.4"), ob.YourIp);

        // The same MAC asking again gets the same address; asking for someone else's is refused.
        _gw.Receive(G.Dhcp(DhcpOption.Discover, 4, a), _now);
        var again = UdpOf(Assert.Single(_sink.Take()));
        Assert.True(DhcpMessage.TryParse(again, out DhcpMessage ag));
        Assert.Equal(G.Guest, ag.YourIp);
        _gw.Receive(G.Dhcp(DhcpOption.Request, 5, a, requested: Ip4.Parse("192.168.65.4")), _now);
        var nak = UdpOf(Assert.Single(_sink.Take()));
        Assert.True(DhcpMessage.TryParse(nak, out DhcpMessage n));
        Assert.Equal(DhcpOption.Nak, n.MessageType);
    }

    [Fact]
    public void UdpGoesToNatAndRepliesComeBack()
    {
        _gw.Receive(G.Udp(G.Remote, 5000, 53, [9, 9]), _now);
        var (flow, payload) = Assert.Single(_flows.Udp);
        Assert.Equal(new UdpFlow(G.Guest, 5000, G.Remote, 53), flow);
        Assert.Equal(new byte[] { 9, 9 }, payload);
        Assert.True(_gw.SendUdp(flow, [1, 2, 3], _now));
        var udp = Packet.ParsePacket(LinkLayers.Ethernet, Assert.Single(_sink.Take())).Extract<UdpPacket>();
        Assert.True(udp.ValidUdpChecksum);
        Assert.Equal(53, udp.SourcePort);
        Assert.Equal(5000, udp.DestinationPort);
        Assert.False(_gw.SendUdp(flow, new byte[1500], _now));
    }

    /// <summary>
    /// SND.MAX: a retransmission timeout rewinds SND.NXT (go back N), but the guest had the bytes after it all along (its
    /// ACK was what got lost). Its next ACK, for everything sent before the rewind, is acceptable: the bytes it carries
    /// are taken and the send side goes on after the acknowledged ones, instead of answering "not yet sent" for ever.
    /// </summary>
    [Fact]
    public void AnAckForBytesSentBeforeAGoBackNRewindIsAccepted()
    {
        (TcpSocket c, uint iss) = Open(guestWindow: 65535);
        Assert.Equal(3000, c.Write(new byte[3000], _now));
        List<Seg> sent = G.Segments(_sink);
        Assert.Equal(3000, sent.Sum(x => x.Payload.Length));
        _now += 2000;
        _gw.OnTimer(_now); // the RTO: the first MSS again, SND.NXT back to SND.UNA + 1 MSS
        Seg again = Assert.Single(G.Segments(_sink));
        Assert.Equal(iss + 1, again.Seq);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1 + 3000, TcpFlags.Ack | TcpFlags.Psh, 65535, payload: "late"u8.ToArray()), _now);
        Assert.Equal(4, c.Readable);
        _now += 5000;
        _gw.OnTimer(_now);
        Assert.DoesNotContain(G.Segments(_sink), x => x.Payload.Length > 0); // nothing left to retransmit
    }

    /// <summary>
    /// RFC 6582: three duplicate ACKs resend the first segment and start fast recovery; a partial ACK (the guest lost
    /// more than one segment of the window) resends the next hole at once, without three more duplicates or the timer.
    /// </summary>
    [Fact]
    public void APartialAckInFastRecoveryResendsTheNextHoleAtOnce()
    {
        (TcpSocket c, uint iss) = Open(guestWindow: 65535);
        Assert.Equal(4 * 1460, c.Write(new byte[4 * 1460], _now));
        Assert.Equal(4 * 1460, G.Segments(_sink).Sum(x => x.Payload.Length));
        for (int i = 0; i < 3; i++)
        {
            _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack, 65535), _now);
        }
        Seg fast = Assert.Single(G.Segments(_sink), x => x.Payload.Length > 0);
        Assert.Equal(iss + 1, fast.Seq);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1 + 2 * 1460, TcpFlags.Ack, 65535), _now); // partial: 2 of 4
        Seg next = Assert.Single(G.Segments(_sink), x => x.Payload.Length > 0);
        Assert.Equal(iss + 1 + 2 * 1460, next.Seq);
    }

    /// <summary>Loses what it is told to, and counts what it was asked about.</summary>
    private sealed class ScriptedLoss : ISegmentLoss
    {
        public bool LoseAll;
        public int Asked;

        public bool Lose()
        {
            Asked++;
            return LoseAll;
        }
    }

    /// <summary>
    /// loss_pct's hook: a lost guest segment never reaches the socket (no ACK, nothing readable), a lost segment of the
    /// socket's never reaches the wire, and retransmission brings both through once the loss stops; a RST is never lost
    /// (nor asked about).
    /// </summary>
    [Fact]
    public void ALossySocketLosesSegmentsBothWaysAndRecovers()
    {
        (TcpSocket c, uint iss) = Open();
        var loss = new ScriptedLoss { LoseAll = true };
        c.Loss = loss;
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Psh, payload: "lost"u8.ToArray()), _now);
        Assert.Equal(0, c.Readable);
        Assert.Equal(4, c.Write("down"u8, _now));
        Assert.Empty(_sink.Take()); // both ways: nothing on the wire, nothing taken
        Assert.Equal(2, loss.Asked);
        loss.LoseAll = false;
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Psh, payload: "lost"u8.ToArray()), _now);
        Assert.Equal(4, c.Readable);
        _now += 2000; // past the RTO: the socket sends its data again
        _gw.OnTimer(_now);
        Assert.Contains(G.Segments(_sink), s => System.Text.Encoding.ASCII.GetString(s.Payload) == "down");
        int asked = loss.Asked;
        loss.LoseAll = true;
        c.Abort(_now);
        Assert.Contains(G.Segments(_sink), s => (s.Flags & TcpFlags.Rst) != 0);
        Assert.Equal(asked, loss.Asked);
    }

    /// <summary>The UDP payload of an emitted frame, with PacketDotNet confirming the UDP checksum.</summary>
    private static byte[] UdpOf(byte[] frame)
    {
        Assert.True(Packet.ParsePacket(LinkLayers.Ethernet, frame).Extract<UdpPacket>().ValidUdpChecksum);
        return frame.AsSpan(14 + 20 + 8).ToArray();
    }

    private static TcpOptions LinuxSyn => new() { Mss = 1460, WindowScale = 7, SackPermitted = true };

    /// <summary>Opens a connection through the whole handshake; returns it and the gateway's ISN.</summary>
    private (TcpSocket C, uint Iss) Open(ushort port = 40000, uint guestIsn = 1000, ushort guestWindow = 1000, TcpOptions? opts = null)
    {
        _gw.Receive(G.Tcp(G.Remote, port, 80, guestIsn, 0, TcpFlags.Syn, 65535, options: opts ?? LinuxSyn), _now);
        Assert.Empty(_sink.Frames); // Connect before accept: nothing until the host connect completes.
        TcpSocket c = _flows.ConnectRequests[^1];
        Assert.Equal(TcpState.Connecting, c.State);
        Assert.True(c.CompleteConnect(connected: true, _now));
        Seg synAck = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Syn | TcpFlags.Ack, synAck.Flags);
        Assert.Equal(guestIsn + 1, synAck.Ack);
        Assert.Equal(1460, synAck.Options.Mss);
        _gw.Receive(G.Tcp(G.Remote, port, 80, guestIsn + 1, synAck.Seq + 1, TcpFlags.Ack, guestWindow), _now);
        Assert.Equal(TcpState.Established, c.State);
        return (c, synAck.Seq);
    }

    [Fact]
    public void HandshakeNegotiatesMssAndWindowScale()
    {
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1000, 0, TcpFlags.Syn, 65535, options: LinuxSyn), _now);
        TcpSocket c = Assert.Single(_flows.ConnectRequests);
        c.CompleteConnect(true, _now);
        Seg synAck = Assert.Single(G.Segments(_sink));
        Assert.Equal(1460, synAck.Options.Mss);
        Assert.True(synAck.Options.WindowScale > 0);
        Assert.True(synAck.Options.SackPermitted); // RFC 2018 §2: the guest's SYN offered it
        Assert.Equal(G.Remote, synAck.Src);
        Assert.Equal(80, synAck.SrcPort);
    }

    [Fact]
    public void NoScalingWhenGuestDoesNotOfferIt()
    {
        var (c, _) = Open(opts: new TcpOptions { Mss = 1460, WindowScale = -1 });
        c.Write(new byte[100], _now);
        Seg s = Assert.Single(G.Segments(_sink));
        Assert.Equal(65535, s.Window);
    }

    [Fact]
    public void RefusedConnectGetsRst()
    {
        _gw.Receive(G.Tcp(G.Remote, 40001, 81, 5000, 0, TcpFlags.Syn, options: LinuxSyn), _now);
        TcpSocket c = Assert.Single(_flows.ConnectRequests);
        Assert.False(c.CompleteConnect(false, _now));
        Seg rst = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Rst | TcpFlags.Ack, rst.Flags);
        Assert.Equal(5001u, rst.Ack);
        Assert.Equal(0, _gw.TcpConnectionCount);
        Assert.Equal(0, _gw.PendingConnects);
    }

    [Fact]
    public void SegmentForUnknownConnectionGetsRst()
    {
        _gw.Receive(G.Tcp(G.Remote, 40002, 80, 10, 77, TcpFlags.Ack), _now);
        Seg rst = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Rst, rst.Flags);
        Assert.Equal(77u, rst.Seq);
    }

    [Fact]
    public void GuestDataReachesHostAndIsAcked()
    {
        var (c, iss) = Open();
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Psh, payload: "hello"u8.ToArray()), _now);
        // One small segment, PSH or not, is acknowledged after the delayed-ACK time (RFC 1122 §4.2.3.2).
        Assert.Empty(G.Segments(_sink));
        _gw.OnTimer(_now + 25);
        Seg ack = Assert.Single(G.Segments(_sink));
        Assert.Equal(1006u, ack.Ack);
        Assert.Equal(5, c.Readable);
        byte[] buf = new byte[64];
        Assert.Equal(5, c.Read(buf, _now));
        Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(buf, 0, 5));
        // A duplicate is acked again and not delivered twice.
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Psh, payload: "hello"u8.ToArray()), _now);
        Assert.Equal(1006u, Assert.Single(G.Segments(_sink)).Ack);
        Assert.Equal(0, c.Readable);
    }

    [Fact]
    public void TheAnswerToARequestCarriesItsAckAndNoSeparateAckIsSent()
    {
        var (c, iss) = Open();
        uint guestSeq = 1001;
        uint ourSeq = iss + 1;
        // The first read of a connection may announce the scaled window once; from the second round trip on, a
        // request and its answer are exactly one frame each way.
        for (int round = 0; round < 3; round++)
        {
            _gw.Receive(G.Tcp(G.Remote, 40000, 80, guestSeq, ourSeq, TcpFlags.Ack | TcpFlags.Psh, payload: "ping"u8.ToArray()), _now);
            guestSeq += 4;
            Assert.Empty(G.Segments(_sink));
            Assert.Equal(4, c.Read(new byte[16], _now));
            List<Seg> afterRead = G.Segments(_sink);
            Assert.True(round == 0 || afterRead.Count == 0);
            Assert.Equal(4, c.Write("pong"u8, _now));
            Seg answer = Assert.Single(G.Segments(_sink));
            Assert.Equal(guestSeq, answer.Ack);
            Assert.Equal("pong", System.Text.Encoding.ASCII.GetString(answer.Payload));
            ourSeq += 4;
            _now += 1;
        }
        _gw.OnTimer(_now + 100);
        Assert.DoesNotContain(G.Segments(_sink), s => s.Payload.Length == 0);
    }

    [Fact]
    public void AShortTailIsHeldWhileTheHostHasMoreAndSentWithTheNextWriteOrShutdown()
    {
        var (c, _) = Open(guestWindow: 65535);
        Assert.Equal(3000, c.Write(new byte[3000], _now, moreFollows: true));
        Assert.Equal(new[] { 1460, 1460 }, G.Segments(_sink).Select(s => s.Payload.Length));
        Assert.Equal(100, c.Write(new byte[100], _now));
        Assert.Equal(new[] { 180 }, G.Segments(_sink).Select(s => s.Payload.Length));

        Assert.Equal(50, c.Write(new byte[50], _now, moreFollows: true));
        Assert.Empty(G.Segments(_sink));
        c.Shutdown(_now);
        List<Seg> last = G.Segments(_sink);
        Assert.Equal(50, last[0].Payload.Length);
        Assert.True(last[^1].Flags.HasFlag(TcpFlags.Fin));
    }

    [Fact]
    public void SlowHostReaderShrinksTheWindowThenReopensIt()
    {
        var gw = new Gateway(new GatewayOptions { TcpBufferSize = 4096 }, _sink, _flows);
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 0, 0, TcpFlags.Syn, options: new TcpOptions { Mss = 1000, WindowScale = -1 }), _now);
        TcpSocket c = _flows.ConnectRequests[^1];
        c.CompleteConnect(true, _now);
        Seg synAck = Assert.Single(G.Segments(_sink));
        Assert.Equal(4096, synAck.Window);
        uint seq = 1;
        for (int i = 0; i < 6; i++)
        {
            gw.Receive(G.Tcp(G.Remote, 40000, 80, seq, synAck.Seq + 1, TcpFlags.Ack, payload: new byte[1000]), _now);
            seq = Math.Min(seq + 1000, 4097);
        }
        List<Seg> acks = G.Segments(_sink);
        Assert.Equal(4096, c.Readable); // Bounded: the rest was beyond the window.
        Seg last = acks[^1];
        Assert.Equal(4097u, last.Ack);
        Assert.Equal(0, last.Window);
        byte[] buf = new byte[4096];
        Assert.Equal(4096, c.Read(buf, _now));
        Seg update = Assert.Single(G.Segments(_sink));
        Assert.Equal(4096, update.Window);
        Assert.Equal(4097u, update.Ack);
    }

    [Fact]
    public void HostDataIsSegmentedByMssAndWindow()
    {
        var (c, iss) = Open(guestWindow: 3000, opts: new TcpOptions { Mss = 1000, WindowScale = 0 });
        Assert.Equal(10_000, c.Write(new byte[10_000], _now));
        List<Seg> segs = G.Segments(_sink);
        Assert.Equal(3, segs.Count);
        Assert.All(segs, s => Assert.Equal(1000, s.Payload.Length));
        Assert.Equal(iss + 1, segs[0].Seq);
        // ACK two segments, open the window: more flows.
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 2001, TcpFlags.Ack, 3000), _now);
        List<Seg> more = G.Segments(_sink);
        Assert.Equal(2, more.Count);
        Assert.Equal(iss + 3001, more[0].Seq);
    }

    [Fact]
    public void FullSendBufferPushesBackAndSignalsWritable()
    {
        var gw = new Gateway(new GatewayOptions { TcpBufferSize = 4096 }, _sink, _flows);
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 0, 0, TcpFlags.Syn, options: new TcpOptions { Mss = 1000, WindowScale = 0 }), _now);
        TcpSocket c = _flows.ConnectRequests[^1];
        c.CompleteConnect(true, _now);
        uint iss = Assert.Single(G.Segments(_sink)).Seq;
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 1, iss + 1, TcpFlags.Ack, 0), _now);
        Assert.Equal(4096, c.Write(new byte[10_000], _now));
        Assert.Equal(0, c.Write(new byte[1], _now));
        Assert.Empty(G.Segments(_sink)); // Zero window: nothing sent yet.
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 1, iss + 1, TcpFlags.Ack, 4000), _now);
        Assert.Equal(4, G.Segments(_sink).Count);
        gw.Receive(G.Tcp(G.Remote, 40000, 80, 1, iss + 4001, TcpFlags.Ack, 4000), _now);
        Assert.Equal(1, _flows.Writable);
        Assert.Equal(4000, c.Writable);
    }

    [Fact]
    public void RetransmitsAfterRtoWithBackoff()
    {
        var (c, iss) = Open();
        c.Write(new byte[500], _now);
        Seg first = Assert.Single(G.Segments(_sink));
        long due = _gw.NextDeadline;
        Assert.Equal(_now + 1000, due);
        _gw.OnTimer(due - 1);
        Assert.Empty(_sink.Frames);
        _gw.OnTimer(due);
        Seg again = Assert.Single(G.Segments(_sink));
        Assert.Equal(first.Seq, again.Seq);
        Assert.Equal(500, again.Payload.Length);
        Assert.Equal(due + 2000, _gw.NextDeadline); // Backed off.
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 501, TcpFlags.Ack), due + 10);
        _gw.OnTimer(due + 5000);
        Assert.Empty(G.Segments(_sink));
        Assert.Equal(1, _gw.Counters.TcpRetransmits);
    }

    [Fact]
    public void FastRetransmitOnThreeDuplicateAcks()
    {
        var (c, iss) = Open(guestWindow: 60000, opts: new TcpOptions { Mss = 1000, WindowScale = 0 });
        c.Write(new byte[5000], _now);
        Assert.Equal(5, G.Segments(_sink).Count);
        for (int i = 0; i < 4; i++) // One new ACK, then three duplicates.
        {
            _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1001, TcpFlags.Ack, 60000), _now);
        }
        Seg re = Assert.Single(G.Segments(_sink));
        Assert.Equal(iss + 1001, re.Seq);
    }

    [Fact]
    public void ZeroWindowIsProbed()
    {
        var (c, iss) = Open(guestWindow: 0);
        c.Write(new byte[100], _now);
        Assert.Empty(G.Segments(_sink));
        _gw.OnTimer(_gw.NextDeadline);
        Seg probe = Assert.Single(G.Segments(_sink));
        Assert.Single(probe.Payload);
        Assert.Equal(iss + 1, probe.Seq);
        // The guest still has no room: it acks nothing new; the probe is repeated later, never abandoned early.
        long t = _gw.NextDeadline;
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack, 0), t - 1);
        List<Seg> probes = [];
        for (int i = 0; i < 3 && probes.Count == 0; i++)
        {
            t = _gw.NextDeadline;
            _gw.OnTimer(t);
            probes = G.Segments(_sink);
        }
        Seg again = Assert.Single(probes);
        Assert.False(c.Removed);
        Assert.Equal(iss + 1, again.Seq);
        // Window opens: everything goes.
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack, 1000), t + 1);
        Assert.Equal(100, G.Segments(_sink).Sum(s => s.Payload.Length));
    }

    [Fact]
    public void GuestHalfCloseThenHostFinishes()
    {
        var (c, iss) = Open();
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Fin), _now);
        Assert.True(c.GuestFinished);
        Assert.Equal(TcpState.CloseWait, c.State);
        // The FIN's ACK is delayed (the host may close at once and carry it); a host that does not gets it from the timer.
        Assert.Empty(G.Segments(_sink));
        _gw.OnTimer(_gw.NextDeadline);
        Assert.Equal(1002u, Assert.Single(G.Segments(_sink)).Ack);
        // The host still talks after the guest's FIN (half-close).
        Assert.Equal(3, c.Write("bye"u8, _now));
        Seg data = Assert.Single(G.Segments(_sink));
        Assert.Equal("bye", System.Text.Encoding.ASCII.GetString(data.Payload));
        c.Shutdown(_now);
        Seg fin = Assert.Single(G.Segments(_sink));
        Assert.True((fin.Flags & TcpFlags.Fin) != 0);
        Assert.Equal(TcpState.LastAck, c.State);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1002, iss + 5, TcpFlags.Ack), _now);
        Assert.True(c.Removed);
        Assert.Equal(0, _gw.TcpConnectionCount);
    }

    [Fact]
    public void GuestFinIsAckedByTheHostsFin()
    {
        var (c, iss) = Open();
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Fin), _now);
        Assert.Empty(G.Segments(_sink));
        c.Shutdown(_now + 1);
        // One frame closes the gateway's side and acknowledges the guest's FIN.
        Seg fin = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Fin | TcpFlags.Ack, fin.Flags);
        Assert.Equal(1002u, fin.Ack);
        Assert.Equal(TcpState.LastAck, c.State);
        _gw.OnTimer(_now + 100); // No delayed ACK is left to fire.
        Assert.Empty(G.Segments(_sink));
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1002, iss + 2, TcpFlags.Ack), _now + 2);
        Assert.True(c.Removed);
    }

    [Fact]
    public void FirstBytesCostNoWindowUpdate()
    {
        var (c, iss) = Open();
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Psh, payload: "ping"u8.ToArray()), _now);
        Span<byte> got = stackalloc byte[4];
        Assert.Equal(4, c.Read(got, _now));
        // The host read the request at once: no ACK (no window update) of its own; the answer carries it.
        Assert.Empty(G.Segments(_sink));
        c.Write("pong"u8, _now);
        Seg answer = Assert.Single(G.Segments(_sink));
        Assert.Equal(1005u, answer.Ack);
        Assert.True(answer.Window > 4096);
    }

    [Fact]
    public void HostHalfCloseThenGuestKeepsSending()
    {
        var (c, iss) = Open();
        c.Shutdown(_now);
        Seg fin = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Fin | TcpFlags.Ack, fin.Flags);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 2, TcpFlags.Ack), _now);
        Assert.Equal(TcpState.FinWait2, c.State);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 2, TcpFlags.Ack | TcpFlags.Psh, payload: "more"u8.ToArray()), _now);
        Assert.Equal(4, c.Readable);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1005, iss + 2, TcpFlags.Ack | TcpFlags.Fin), _now);
        Assert.Equal(TcpState.TimeWait, c.State);
        _sink.Take();
        _gw.OnTimer(_now + 2000);
        Assert.Equal(0, _gw.TcpConnectionCount);
        Assert.Equal(4, c.Readable); // Unread data survives a normal close.
    }

    [Fact]
    public void GuestResetNeedsExactSequence()
    {
        var (c, iss) = Open();
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1500, 0, TcpFlags.Rst), _now);
        Seg challenge = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Ack, challenge.Flags);
        Assert.False(c.IsReset);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, 0, TcpFlags.Rst), _now);
        Assert.True(c.IsReset);
        Assert.Same(c, Assert.Single(_flows.Resets));
        Assert.Equal(0, _gw.TcpConnectionCount);
    }

    [Fact]
    public void HostAbortSendsRst()
    {
        var (c, iss) = Open();
        c.Abort(_now);
        Seg rst = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Rst | TcpFlags.Ack, rst.Flags);
        Assert.Equal(iss + 1, rst.Seq);
        Assert.Equal(0, _gw.TcpConnectionCount);
    }

    [Fact]
    public void SynAckIsRetransmittedThenGivenUp()
    {
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1000, 0, TcpFlags.Syn, options: LinuxSyn), _now);
        TcpSocket c = Assert.Single(_flows.ConnectRequests);
        c.CompleteConnect(true, _now);
        _sink.Take();
        int synAcks = 0;
        for (int i = 0; i < 20 && !c.Removed; i++)
        {
            _gw.OnTimer(_gw.NextDeadline);
            synAcks += G.Segments(_sink).Count(s => s.Flags == (TcpFlags.Syn | TcpFlags.Ack));
        }
        Assert.True(c.Removed);
        Assert.Equal(6, synAcks);
        Assert.Single(_flows.Resets);
    }

    [Fact]
    public void OpenToGuestArpsThenConnects()
    {
        TcpSocket? c = _gw.OpenToGuest(G.Guest, 8080, G.Host, _now);
        Assert.NotNull(c);
        byte[] arp = Assert.Single(_sink.Take());
        Assert.True(EthernetFrame.TryParse(arp, out EthernetFrame e));
        Assert.Equal(EtherType.Arp, e.EtherType);
        _gw.Receive(G.ArpRequest(G.Gateway), _now); // The guest shows up (and is learned).
        _sink.Take();
        _gw.OnTimer(_gw.NextDeadline);
        Seg syn = Assert.Single(G.Segments(_sink));
        Assert.Equal(TcpFlags.Syn, syn.Flags);
        Assert.Equal(8080, syn.DstPort);
        Assert.Equal(G.Host, syn.Src);
        _gw.Receive(G.Tcp(G.Host, 8080, syn.SrcPort, 777, syn.Seq + 1, TcpFlags.Syn | TcpFlags.Ack, options: LinuxSyn), _now + 1000);
        Assert.Equal(TcpState.Established, c!.State);
        Assert.Same(c, Assert.Single(_flows.Established));
        Seg ack = Assert.Single(G.Segments(_sink));
        Assert.Equal(778u, ack.Ack);
    }
}
