using System.Buffers.Binary;
using System.Net.Sockets;
using Kit.Linux;
using Kit.VpnKit.Links;
using Kit.VpnKit.Services;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.Fuzz;

internal static class VpnKitTargets
{
    /// <summary>
    /// vpnkit-gateway: the pure engine on a fake clock, fed the input's records. Each record is
    /// [flags u8][dt u8][frame...]: the clock advances dt*16 ms, then the frame goes in (checksums trusted when flags
    /// bit 0 is set, so the fuzzer reaches TCP without computing checksums). After each frame the fake NAT completes
    /// the pending connects (refused when bit 1 is set), reads what guests sent, writes host data (bit 2), shuts
    /// connections down (bit 3), aborts them (bit 4), opens one to the guest (bit 5), and timers run when due.
    /// At the end the clock runs on for ten minutes so every retransmission and timeout fires.
    /// </summary>
    public static void Gateway(byte[] input)
    {
        var sink = new NullSink();
        var nat = new FakeNat();
        var options = new GatewayOptions { Mtu = 1500, TcpBufferSize = 16 * 1024, MaxTcpConnections = 64, MaxPendingConnects = 16, IsnSecret = 42 };
        var gw = new Kit.VpnKit.Stack.Gateway(options, sink, nat);
        long now = 1_000_000;
        byte[] host = new byte[3000];
        byte[] read = new byte[4096];
        for (int i = 0; i < host.Length; i++)
        {
            host[i] = (byte)i;
        }
        foreach (ReadOnlyMemory<byte> r in FuzzTargets.Records(input))
        {
            if (r.Length < 2)
            {
                continue;
            }
            byte flags = r.Span[0];
            now += r.Span[1] * 16;
            gw.Receive(r.Span[2..], now, checksumsTrusted: (flags & 1) != 0);
            foreach (TcpSocket c in nat.TakeConnects())
            {
                c.CompleteConnect(connected: (flags & 2) == 0, now);
            }
            foreach (TcpSocket c in nat.Live())
            {
                while (c.Read(read, now) > 0)
                {
                }
                if ((flags & 4) != 0)
                {
                    c.Write(host.AsSpan(0, 100 + (flags * 7)), now);
                }
                if ((flags & 8) != 0)
                {
                    c.Shutdown(now);
                }
                if ((flags & 16) != 0)
                {
                    c.Abort(now);
                }
            }
            if ((flags & 32) != 0)
            {
                TcpSocket? c = gw.OpenToGuest(options.FirstGuestIp, 80, options.HostIp, now);
                if (c is not null)
                {
                    nat.Add(c);
                }
            }
            if ((flags & 64) != 0)
            {
                gw.SendUdp(new UdpFlow(options.FirstGuestIp, 5353, options.HostIp, 53), host.AsSpan(0, flags), now);
            }
            RunTimers(gw, now);
        }
        for (int i = 0; i < 600; i++)
        {
            now += 1000;
            RunTimers(gw, now);
        }
    }

    private static void RunTimers(Kit.VpnKit.Stack.Gateway gw, long now)
    {
        // A deadline that never moves past now would spin: bound it (a hang is then a finding by afl's -t).
        for (int i = 0; i < 64 && gw.NextDeadline <= now; i++)
        {
            gw.OnTimer(now);
        }
    }

    private sealed class NullSink : IFrameSink
    {
        public void Send(ReadOnlySpan<byte> frame)
        {
        }

        public void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize)
        {
        }
    }

    /// <summary>The NAT's side, with no sockets: connects are completed after the frame that asked for them.</summary>
    private sealed class FakeNat : IFlowHandler
    {
        private readonly List<TcpSocket> _connecting = [];
        private readonly List<TcpSocket> _live = [];

        public void Add(TcpSocket c) => _live.Add(c);

        public List<TcpSocket> TakeConnects()
        {
            var list = new List<TcpSocket>(_connecting);
            _connecting.Clear();
            return list;
        }

        public List<TcpSocket> Live()
        {
            _live.RemoveAll(c => c.Removed || c.IsReset);
            return [.. _live];
        }

        public void TcpConnectRequested(TcpSocket connection)
        {
            _connecting.Add(connection);
            _live.Add(connection);
        }

        public void TcpEstablished(TcpSocket connection)
        {
        }

        public void TcpReadable(TcpSocket connection)
        {
        }

        public void TcpWritable(TcpSocket connection)
        {
        }

        public void TcpReset(TcpSocket connection) => _live.Remove(connection);

        // Every other datagram and echo is rejected, so the fuzzer also drives the unreachables that answer them.
        public FlowVerdict UdpReceived(in UdpFlow flow, ReadOnlySpan<byte> payload) => Alternate();

        public FlowVerdict IcmpEchoRequested(uint guestIp, uint destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload) => Alternate();

        public FlowVerdict Udp6Received(in Udp6Flow flow, ReadOnlySpan<byte> payload) => Alternate();

        public FlowVerdict Icmp6EchoRequested(UInt128 guestIp, UInt128 destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload) => Alternate();

        private FlowVerdict Alternate() => (++_datagrams & 1) == 0 ? FlowVerdict.Rejected : FlowVerdict.Taken;

        private int _datagrams;
    }

    /// <summary>
    /// vpnkit-wire: input[0] picks a parser, the rest is its input: 0 IPv4 (with and without checksum verification,
    /// then fragment reassembly), 1 TCP segment and options, 2 DHCP message and its options, 3 DNS message (question,
    /// minimum TTL, name comparison, the SERVFAIL reply built from a query), 4 Ethernet, ARP, UDP, ICMP.
    /// </summary>
    public static void Wire(byte[] input)
    {
        if (input.Length == 0)
        {
            return;
        }
        ReadOnlySpan<byte> p = input.AsSpan(1);
        switch (input[0] % 5)
        {
            case 0:
                Ipv4Packet.TryParse(p, out _, verifyChecksum: true);
                if (Ipv4Packet.TryParse(p, out Ipv4Packet ip, verifyChecksum: false) == Ipv4Error.None)
                {
                    _ = ip.Options.Length + ip.Payload.Length + ip.FragmentOffset + ip.Protocol;
                    if (ip.IsFragment)
                    {
                        new Ipv4Reassembly().Add(ip, 0, out _);
                    }
                }
                break;
            case 1:
                TcpOptions.Parse(p);
                if (TcpSegment.TryParse(p, out TcpSegment tcp))
                {
                    TcpOptions o = tcp.Options;
                    Span<byte> w = stackalloc byte[TcpOptions.MaxLength];
                    o.Write(w);
                    _ = tcp.Payload.Length + tcp.ChecksumValid(0x0A000001, 0x0A000002).GetHashCode();
                }
                break;
            case 2:
                if (DhcpMessage.TryParse(p, out DhcpMessage dhcp))
                {
                    _ = dhcp.MessageType + dhcp.RequestedIp + dhcp.ServerId + dhcp.ClientMac.GetHashCode();
                    for (int code = 0; code < 256; code++)
                    {
                        dhcp.TryGetOption((byte)code, out _);
                    }
                }
                break;
            case 3:
                if (DnsMessage.TryParse(p, out DnsMessage dns))
                {
                    if (dns.TryReadQuestion(out ReadOnlySpan<byte> name, out _, out _, out _))
                    {
                        DnsMessage.NameEquals(name, "host.docker.internal");
                        DnsMessage.NameEquals(name, "");
                    }
                    dns.TryGetMinimumTtl(out _);
                }
                DnsForwarder.ServerFailure(p.ToArray());
                break;
            default:
                EthernetFrame.TryParse(p, out _);
                ArpPacket.TryParse(p, out _);
                UdpDatagram.TryParse(p, out _);
                IcmpPacket.TryParse(p, out _);
                break;
        }
    }

    /// <summary>
    /// vmn3t: hyperkit's VMN3T handshake (Init, command, VIF response) on one end of a socket pair whose other end
    /// sent the input and hung up, then the data phase's 2-byte framing until the end of the input. input[0]'s low bit
    /// decides whether a Preferred_ipv4 claim is refused.
    /// </summary>
    public static void Vmn3tHandshake(byte[] input)
    {
        if (input.Length == 0)
        {
            return;
        }
        bool refuse = (input[0] & 1) != 0;
        (Socket ours, Socket peer) = Pair(input.AsSpan(1));
        using (peer)
        {
            using StreamLink? link = Vmn3t.Accept(ours, "fuzz", 1500, (mac, address) =>
                refuse ? Vmn3t.RefusalReason(address % 3 == 0 ? LeaseReservation.InUse : LeaseReservation.OutOfRange, address) : null);
            if (link is not null)
            {
                Drain(link);
            }
        }
    }

    /// <summary>qemu-stream: QEMU's -netdev stream framing (4-byte big-endian lengths) on a socket pair, MTU 1500.</summary>
    public static void QemuStream(byte[] input)
    {
        (Socket ours, Socket peer) = Pair(input);
        using (peer)
        {
            using var link = new StreamLink(ours, "fuzz", 1500, qemuFraming: true);
            Drain(link);
            link.Send(input.AsSpan(0, Math.Min(input.Length, link.MaxFrame)));
        }
    }

    private static void Drain(ILink link)
    {
        byte[] frame = new byte[link.MaxFrame];
        while (link.Receive(frame) > 0)
        {
        }
    }

    /// <summary>A connected pair: the peer has written <paramref name="sent"/> and shut its sending side.</summary>
    internal static (Socket Ours, Socket Peer) Pair(ReadOnlySpan<byte> sent)
    {
        if (!Sys.CreateSocketPair(out int a, out int b))
        {
            throw new IOException("socketpair failed");
        }
        var ours = new Socket(new SafeSocketHandle(a, ownsHandle: true));
        var peer = new Socket(new SafeSocketHandle(b, ownsHandle: true));
        while (sent.Length > 0)
        {
            sent = sent[peer.Send(sent)..];
        }
        peer.Shutdown(SocketShutdown.Send);
        return (ours, peer);
    }
}
