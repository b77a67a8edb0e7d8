namespace Kit.VpnKit.Stack;

/// <summary>Why frames were dropped or refused: counted, never thrown.</summary>
internal sealed class GatewayCounters
{
    public long FramesIn;
    public long FramesOut;
    public long Malformed;
    public long BadChecksum;
    public long Fragments;
    public long Reassembled;
    public long NotForUs;
    public long TcpNoConnection;
    public long TcpTableFull;
    public long TcpPendingFull;
    public long TcpRetransmits;
    /// <summary>Guest segments that arrived past a hole (held in the socket's out-of-order queue when they fit).</summary>
    public long TcpOutOfOrder;
    /// <summary>Out-of-order segments dropped because the queue held its most separate runs already.</summary>
    public long TcpOutOfOrderFull;
    public long UdpTooLarge;
    public long ArpReplies;
    public long DhcpReplies;
    /// <summary>DISCOVERs and REQUESTs refused: the link was at its lease cap, or the pool was empty.</summary>
    public long DhcpRefused;
    /// <summary>Expired leases taken back for a new client.</summary>
    public long DhcpReclaimed;
    /// <summary>IPv6 packets refused by the header or extension-chain checks (RFC 8200 §4), or a bad ICMPv6/UDP/TCP view.</summary>
    public long Ipv6Malformed;
    /// <summary>IPv6 from a source a guest may not use: not link-local or in the prefix, multicast, or the gateway's own.</summary>
    public long Ipv6Spoofed;
    /// <summary>IPv6 fragments received (reassembled ones count in <see cref="Reassembled"/>, as for IPv4).</summary>
    public long Ipv6Fragments;
    /// <summary>Neighbor Discovery messages that fail RFC 4861's validity checks (hop limit 255, code, options).</summary>
    public long NdpInvalid;
    /// <summary>Router Advertisements and Redirects sent by a guest: a guest is never a router for the others.</summary>
    public long NdpFromGuestRouter;
    public long NdpReplies;
    /// <summary>ICMPv6 errors and RSTs not sent because of the rate limit (RFC 4443 §2.4(f)).</summary>
    public long Icmpv6ErrorsLimited;
    /// <summary>ICMPv6 destination unreachables and TCP RSTs sent for IPv6 traffic the gateway does not carry yet.</summary>
    public long Ipv6Refused;
    /// <summary>ICMP destination unreachables (administratively prohibited) sent for datagrams and echoes a reject rule refused.</summary>
    public long Prohibited;
    /// <summary>Port unreachables (ICMP code 3, ICMPv6 code 4) sent for datagrams the host refused (ECONNREFUSED on the flow's socket).</summary>
    public long PortUnreachable;
}
