using System.Net;

namespace Kit.VpnKit.Policy;

/// <summary>What a matching rule does to a new flow.</summary>
public enum RuleAction
{
    /// <summary>The flow goes ahead (with the rule's impairment, if any).</summary>
    Allow,
    /// <summary>Dropped silently: a SYN gets no answer, datagrams and echoes vanish (the guest times out).</summary>
    Deny,
    /// <summary>Refused at once: RST+ACK for a SYN (RST both ways after the handshake); ICMP port unreachable is not sent, datagrams are dropped.</summary>
    Reject,
}

/// <summary>The transport a rule is limited to.</summary>
public enum RuleProto
{
    Any,
    Tcp,
    Udp,
    Icmp,
}

/// <summary>
/// The conditions of a rule; every field given must hold (an absent field matches anything). Names compare without
/// case and without a trailing dot; <c>*.zone</c> matches every name under the zone (not the zone itself), as the DNS
/// forwarder's <c>--dns-record *.ZONE</c> does.
/// </summary>
public sealed record RuleMatch
{
    /// <summary>The destination as the guest sees it (192.168.65.2 is the host); IPv6 networks parse but match no IPv4 flow.</summary>
    public IPNetwork? Cidr { get; init; }
    public ushort PortLow { get; init; }
    public ushort PortHigh { get; init; } = ushort.MaxValue;
    public RuleProto Proto { get; init; }
    /// <summary>The name the guest resolved for the destination, through the DNS forwarder.</summary>
    public string? Dns { get; init; }
    /// <summary>TLS server name (RFC 6066 §3) of the flow's ClientHello.</summary>
    public string? Sni { get; init; }
    /// <summary>The Host header of the flow's first HTTP/1.x request (RFC 9112 §3.2), port removed.</summary>
    public string? Host { get; init; }

    /// <summary>Conditions on the guest's first bytes: the rule is decided only once they are read.</summary>
    public bool NeedsStream => Sni is not null || Host is not null;

    /// <summary>Whether <paramref name="name"/> is <paramref name="pattern"/> or, for <c>*.zone</c>, a name under zone.</summary>
    public static bool NameMatches(string pattern, string? name)
    {
        if (name is null)
        {
            return false;
        }
        ReadOnlySpan<char> n = name.AsSpan().TrimEnd('.');
        if (pattern.StartsWith("*.", StringComparison.Ordinal))
        {
            ReadOnlySpan<char> zone = pattern.AsSpan(1); // ".zone"
            return n.Length > zone.Length && n.EndsWith(zone, StringComparison.OrdinalIgnoreCase);
        }
        return n.Equals(pattern, StringComparison.OrdinalIgnoreCase);
    }
}

/// <summary>
/// Test traffic on a rule (issue 17 item 4), each 0 when off. <see cref="LatencyMs"/> and <see cref="JitterMs"/> delay
/// what goes to the guest on a TCP flow and the guest's datagrams and echo requests on their way out (either way a round
/// trip grows by the latency);
/// <see cref="RateKbps"/> caps each direction of a TCP flow (kilobits, 1000 bits, per second: back-pressure) and of a UDP
/// flow (payload bytes; what exceeds is dropped); <see cref="LossPct"/> drops the guest's UDP datagrams and echo requests,
/// and a TCP flow's segments both ways at the gateway (its own recovery then runs);
/// <see cref="ResetAfterBytes"/> resets a TCP flow (both ways) once that many bytes moved, both directions counted.
/// </summary>
public sealed record Impairment
{
    public int LatencyMs { get; init; }
    public int JitterMs { get; init; }
    public double LossPct { get; init; }
    public long RateKbps { get; init; }
    public long ResetAfterBytes { get; init; }

    public bool Any => LatencyMs > 0 || JitterMs > 0 || LossPct > 0 || RateKbps > 0 || ResetAfterBytes > 0;

    /// <summary>Whether a TCP proxy has anything to do for this rule (TCP loss is the engine's: <c>TcpSocket.Loss</c>).</summary>
    public bool ShapesStreams => LatencyMs > 0 || JitterMs > 0 || RateKbps > 0 || ResetAfterBytes > 0;
}

/// <summary>One named rule: its conditions, its action, its impairment, and its counters.</summary>
public sealed class PolicyRule(string name, RuleMatch match, RuleAction action, Impairment impair)
{
    public string Name { get; } = name;
    public RuleMatch Match { get; } = match;
    public RuleAction Action { get; } = action;
    public Impairment Impair { get; } = impair;

    /// <summary>Flows (TCP connections, UDP datagrams, echo requests) this rule decided.</summary>
    public long Matches => Interlocked.Read(ref _matches);
    private long _matches;

    /// <summary>Payload bytes this rule allowed: both directions of its TCP flows with impairment, the datagrams and echoes it let out.</summary>
    public long Bytes => Interlocked.Read(ref _bytes);
    private long _bytes;

    /// <summary>What loss_pct and rate_kbps dropped: TCP segments (both ways), UDP datagrams (both ways), echo requests.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);
    private long _dropped;

    /// <summary>TCP segments (both ways, dropped ones included) of this rule's loss_pct flows: the share dropped is <see cref="Dropped"/>/this.</summary>
    public long Segments => Interlocked.Read(ref _segments);
    private long _segments;

    internal void Count() => Interlocked.Increment(ref _matches);

    internal void CountDrop() => Interlocked.Increment(ref _dropped);

    /// <summary>One TCP segment of a loss_pct flow, and whether it was lost.</summary>
    internal void CountSegment(bool dropped)
    {
        Interlocked.Increment(ref _segments);
        if (dropped)
        {
            CountDrop();
        }
    }

    internal void AddBytes(long n) => Interlocked.Add(ref _bytes, n);
}
