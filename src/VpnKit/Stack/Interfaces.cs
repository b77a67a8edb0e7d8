namespace Kit.VpnKit.Stack;

/// <summary>Where the engine puts frames for guests. Called synchronously; the span is only valid during the call.</summary>
internal interface IFrameSink
{
    void Send(ReadOnlySpan<byte> frame);

    /// <summary>
    /// A TCP segment with a partial checksum (pseudo-header only) that the link must finish, and cut into
    /// <paramref name="segmentSize"/>-byte segments when its payload is larger (0: no cutting).
    /// Only used when <see cref="GatewayOptions.SegmentationOffload"/> is on.
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
    /// <summary>A guest SYN for a new flow: connect on the host, then call <see cref="Gateway.CompleteConnect"/>.</summary>
    void TcpConnectRequested(TcpConnection connection);

    /// <summary>An engine-opened (inbound) connection reached ESTABLISHED.</summary>
    void TcpEstablished(TcpConnection connection);

    /// <summary>Guest data (or its FIN) is waiting in the connection's receive buffer.</summary>
    void TcpReadable(TcpConnection connection);

    /// <summary>Space opened in the connection's send buffer after the host found it full.</summary>
    void TcpWritable(TcpConnection connection);

    /// <summary>The connection was reset (by the guest, by retransmission give-up, or refused); drop the host socket.</summary>
    void TcpReset(TcpConnection connection);

    /// <summary>A UDP datagram from a guest to anything but the DHCP server.</summary>
    void UdpReceived(in UdpFlow flow, ReadOnlySpan<byte> payload);

    /// <summary>An ICMP echo request to an address the gateway does not answer itself.</summary>
    void IcmpEchoRequested(uint guestIp, uint destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload);
}

/// <summary>A UDP 4-tuple as the guest sees it.</summary>
internal readonly record struct UdpFlow(uint GuestIp, ushort GuestPort, uint RemoteIp, ushort RemotePort);
