using System.Diagnostics;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Inspect;

/// <summary>How a flow ended.</summary>
public enum FlowEnd
{
    None,
    /// <summary>Both sides closed (FIN each way).</summary>
    Fin,
    /// <summary>Reset by the guest, the host or the gateway (RST).</summary>
    Rst,
    /// <summary>The host connect failed (the guest got RST+ACK).</summary>
    Refused,
    /// <summary>Idle past the NAT's timeout, or a connect that took too long.</summary>
    Timeout,
    /// <summary>Refused by the gateway's reachability policy (--block-metadata, --no-host-loopback).</summary>
    Policy,
    /// <summary>The gateway stopped.</summary>
    Closed,
}

/// <summary>
/// One flow as the inspector sees it. Written by the NAT on the engine's thread (under the engine lock), read by the
/// API while it runs: every field is a word-sized or reference write, so a reader sees a value that was true a moment ago.
/// </summary>
public sealed class FlowRecord
{
    internal FlowRecord(long id, string proto, IpAddr guestIp, ushort guestPort, IpAddr remoteIp, ushort remotePort, string? name, bool inbound)
    {
        Id = id;
        Proto = proto;
        GuestIp = guestIp;
        GuestPort = guestPort;
        RemoteIp = remoteIp;
        RemotePort = remotePort;
        Name = name;
        Inbound = inbound;
        Start = DateTimeOffset.UtcNow;
        StartTicks = Stopwatch.GetTimestamp();
    }

    public long Id { get; }
    public string Proto { get; }
    /// <summary>The guest's address, IPv4 or IPv6 (IPv4 held IPv4-mapped, shown dotted).</summary>
    internal IpAddr GuestIp { get; }
    public ushort GuestPort { get; }
    /// <summary>The destination as the guest addressed it (the host alias, not the host's loopback).</summary>
    internal IpAddr RemoteIp { get; }
    public ushort RemotePort { get; }
    /// <summary>The DNS name the guest resolved for the remote address (the forwarder's view), if any.</summary>
    public string? Name { get; }
    /// <summary>Opened from the host to the guest (a published port).</summary>
    public bool Inbound { get; }
    public DateTimeOffset Start { get; }
    internal long StartTicks { get; }
    public DateTimeOffset? End { get; internal set; }
    public FlowEnd EndReason { get; internal set; }
    /// <summary>When the host connect completed (Stopwatch ticks), 0 until then.</summary>
    internal long ConnectedTicks;
    internal long LastTicks;
    public long BytesOut;
    public long BytesIn;
    public long PacketsOut;
    public long PacketsIn;
    public int RttMs;
    /// <summary>"http", "tls" or "other" once the guest's first bytes said which (TCP only).</summary>
    public string? App { get; internal set; }
    public string? Sni { get; internal set; }
    public string? Alpn { get; internal set; }
    /// <summary>The first HTTP request's Host header.</summary>
    public string? HttpHost { get; internal set; }
    /// <summary>Why parsing stopped ("oversized header block", "malformed request line", ...).</summary>
    public string? Note { get; internal set; }
}

/// <summary>One HTTP/1.x request and its response on a flow. Bodies are counted, never kept.</summary>
public sealed class HttpExchange
{
    internal HttpExchange(long id, FlowRecord flow)
    {
        Id = id;
        Flow = flow;
        Start = DateTimeOffset.UtcNow;
        StartTicks = Stopwatch.GetTimestamp();
    }

    public long Id { get; }
    public FlowRecord Flow { get; }
    public DateTimeOffset Start { get; }
    internal long StartTicks { get; }
    public string Method { get; internal set; } = "";
    public string Target { get; internal set; } = "";
    public string? Host { get; internal set; }
    public string Version { get; internal set; } = "HTTP/1.1";
    public int Status { get; internal set; }
    public string? Reason { get; internal set; }
    public long RequestHeaderBytes { get; internal set; }
    public long RequestBodyBytes { get; internal set; }
    public long ResponseHeaderBytes { get; internal set; }
    public long ResponseBodyBytes { get; internal set; }
    /// <summary>Connect time of the flow for its first exchange (ms), else 0: the connection was reused.</summary>
    public double ConnectMs { get; internal set; }
    internal long RequestDoneTicks;
    internal long FirstByteTicks;
    internal long DoneTicks;
    /// <summary>"pending", "complete", "malformed", "oversized", "incomplete" (the flow ended first).</summary>
    public string State { get; internal set; } = "pending";
    public string? Note { get; internal set; }
}

/// <summary>One query the DNS forwarder answered (or could not).</summary>
public sealed record DnsEntry(long Id, DateTimeOffset Time, string Client, string Name, string Type, string Answer, string Rcode,
    string Source, double LatencyMs, bool CacheHit);
