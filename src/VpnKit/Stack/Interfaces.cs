using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>Where the engine puts frames for guests. Called synchronously; the span is only valid during the call.</summary>
internal interface IFrameSink
{
    void Send(ReadOnlySpan<byte> frame);

    /// <summary>
    /// A TCP segment with a partial checksum (pseudo-header only) that the link must finish, and cut into
    /// <paramref name="segmentSize"/>-byte segments when its payload is larger (0: no cutting).
    /// Only used for the families in <see cref="GatewayOptions.SegmentationOffload"/>.
    /// </summary>
    void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize);
}

/// <summary>
/// The host side of the flows the engine terminates (the NAT). The engine calls these synchronously while the
/// driver holds its lock: implementations must not block and must not call back into the engine re-entrantly
/// from another thread without that lock.
/// </summary>
internal interface IFlowHandler
{
    /// <summary>A guest SYN for a new flow: connect on the host, then call <see cref="TcpSocket.CompleteConnect"/>.</summary>
    void TcpConnectRequested(TcpSocket connection);

    /// <summary>An engine-opened (inbound) connection reached ESTABLISHED.</summary>
    void TcpEstablished(TcpSocket connection);

    /// <summary>Guest data (or its FIN) is waiting in the connection's receive buffer.</summary>
    void TcpReadable(TcpSocket connection);

    /// <summary>Space opened in the connection's send buffer after the host found it full.</summary>
    void TcpWritable(TcpSocket connection);

    /// <summary>The connection was reset (by the guest, by retransmission give-up, or refused); drop the host socket.</summary>
    void TcpReset(TcpSocket connection);

    /// <summary>A UDP datagram from a guest to anything but the DHCP server.</summary>
    FlowVerdict UdpReceived(in UdpFlow flow, ReadOnlySpan<byte> payload);

    /// <summary>An ICMP echo request to an address the gateway does not answer itself.</summary>
    FlowVerdict IcmpEchoRequested(uint guestIp, uint destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload);

    /// <summary>A UDP datagram from a guest to an IPv6 destination outside the link, or to the host alias (NAT66).</summary>
    FlowVerdict Udp6Received(in Udp6Flow flow, ReadOnlySpan<byte> payload);

    /// <summary>An ICMPv6 echo request to an IPv6 destination outside the link, or to the host alias (NAT66).</summary>
    FlowVerdict Icmp6EchoRequested(UInt128 guestIp, UInt128 destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload);
}

/// <summary>
/// loss_pct on one TCP flow (docs/vpnkit.md, "Policy"): asked once for every segment the gateway takes from the guest or
/// puts on the wire for it (a RST excepted: it is never retransmitted), and a true answer drops it there, so both ends'
/// own recovery (RFC 9293 §3.8, RFC 5681) runs. The NAT sets it on the socket when a rule with loss allows the flow; the
/// engine only asks (the draw and the counting are the implementation's).
/// </summary>
internal interface ISegmentLoss
{
    bool Lose();
}

/// <summary>What the host side did with a guest's datagram or echo request.</summary>
internal enum FlowVerdict
{
    /// <summary>Sent on, or dropped without a word (a deny rule, loss, an address not carried).</summary>
    Taken,

    /// <summary>
    /// Refused by a reject rule: the engine answers with a destination unreachable, "communication administratively
    /// prohibited" (ICMP code 13, RFC 1812 §5.2.7.1; ICMPv6 code 1, RFC 4443 §3.1), so the guest's socket fails at once.
    /// </summary>
    Rejected,
}

/// <summary>
/// Where the engine hands a DNS query a guest sent to the gateway's IPv6 address (port 53). Called synchronously under
/// the engine lock: implementations answer later, through <see cref="Gateway.SendUdp6"/>.
/// </summary>
internal interface IDnsQueries
{
    void QueryReceived(in Udp6Flow flow, ReadOnlySpan<byte> query);
}

/// <summary>
/// Takes a guest's datagram to the host alias's IPv6 address when it answers a host client of a published UDP port.
/// Called synchronously under the engine lock.
/// </summary>
internal interface IUdp6Replies
{
    /// <summary>True if the datagram was such a reply (and was sent to its host client).</summary>
    bool TryDeliver(in Udp6Flow flow, ReadOnlySpan<byte> payload);
}

/// <summary>A UDP 4-tuple over IPv6 as the guest sees it.</summary>
internal readonly record struct Udp6Flow(UInt128 GuestIp, ushort GuestPort, UInt128 RemoteIp, ushort RemotePort);

/// <summary>A UDP 4-tuple as the guest sees it.</summary>
internal readonly record struct UdpFlow(uint GuestIp, ushort GuestPort, uint RemoteIp, ushort RemotePort);

/// <summary>
/// What a <see cref="TcpSocket"/> needs from the interface that owns it (smoltcp's socket/interface split): the wire,
/// the MAC of its guest, a wake-up for its timers, the flow events, and its removal from the table. The gateway
/// implements it; every call is on the engine's thread.
/// </summary>
internal interface ITcpSocketHost
{
    /// <summary>Our MSS over IPv4: the MTU less 40 bytes of IPv4 and TCP headers (a socket takes 20 more off for IPv6).</summary>
    int Mss { get; }

    /// <summary>Largest payload per dispatched segment when the link segments the family's TCP (TSO); 0 = the MSS.</summary>
    int MaxSegment(bool ipv4);

    GatewayCounters Counters { get; }

    IFlowHandler Flows { get; }

    /// <summary>Puts a segment on the wire: the socket's header fields, payload bytes from its send buffer.</summary>
    void Transmit(TcpSocket socket, in TcpHeaderFields header, int sendOffset, int length);

    /// <summary>A bare segment without options or window (a RST the state machine owes the guest).</summary>
    void SendBareSegment(TcpSocket socket, uint seq, uint ack, TcpFlags flags);

    bool TryResolve(IpAddr guestIp, out MacAddress mac);

    /// <summary>Asks for the guest's MAC (ARP, or a Neighbor Solicitation); the socket retries from its retransmission timer.</summary>
    void RequestAddress(IpAddr guestIp);

    /// <summary>The socket has a timer due at <paramref name="deadline"/> (absolute ms).</summary>
    void WakeAt(long deadline);

    /// <summary>A passive open's host connect reported: it no longer counts against the connects-in-flight bound.</summary>
    void ConnectFinished(TcpSocket socket);

    /// <summary>The socket closed: out of the table (and of the connects in flight).</summary>
    void Detach(TcpSocket socket);
}
