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
    public long TcpOutOfOrder;
    public long UdpTooLarge;
    public long ArpReplies;
    public long DhcpReplies;
    /// <summary>DISCOVERs and REQUESTs refused: the link was at its lease cap, or the pool was empty.</summary>
    public long DhcpRefused;
    /// <summary>Expired leases taken back for a new client.</summary>
    public long DhcpReclaimed;
}
