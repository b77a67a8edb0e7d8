using System.Buffers.Binary;
using System.Diagnostics;
using System.Threading.Channels;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Inspect;

/// <summary>What the inspector records (<c>--ui</c> turns it on).</summary>
public sealed class InspectorOptions
{
    /// <summary>Flows kept (TCP, UDP and ICMP together); the oldest is forgotten first.</summary>
    public int MaxFlows { get; init; } = 4096;
    public int MaxDns { get; init; } = 4096;
    public int MaxHttp { get; init; } = 4096;
    /// <summary>Look at TCP payloads for HTTP/1.x and TLS ClientHellos (off: flows and DNS only).</summary>
    public bool Http { get; init; } = true;
}

/// <summary>A change the live stream (<c>/api/events</c>) carries: a flow opened or ended, a DNS answer, an HTTP exchange done.</summary>
public sealed record InspectEvent(string Kind, FlowView? Flow = null, DnsEntry? Dns = null, HttpView? Http = null);

/// <summary>
/// A tap beside the data path: the NAT tells it what passed (flows, their byte counts, the guest's first bytes of a TCP
/// stream, DNS answers), and it keeps bounded rings of records. It is handed copies of nothing and returns nothing the
/// NAT acts on, so it can neither drop nor change a byte; a fault in it costs the observation, not the flow
/// (<see cref="StreamTap"/> catches). A later policy engine hooks at the same calls: <see cref="OpenFlow"/> knows the
/// flow's DNS name before the host connect, and a <see cref="StreamTap"/> learns the SNI and HTTP Host first.
/// </summary>
public sealed class Inspector
{
    private readonly object _gate = new();
    private readonly RecordRing<FlowRecord> _flows;
    private readonly RecordRing<DnsEntry> _dns;
    private readonly RecordRing<HttpExchange> _http;
    private readonly AddressNames _names;
    private readonly Dictionary<ulong, FlowRecord> _icmp = [];
    private readonly List<Channel<InspectEvent>> _subscribers = [];
    private long _nextId;

    /// <summary>An echo exchange idle this long is over (ping's default interval is 1 s).</summary>
    private const long IcmpIdleMs = 10_000;
    private const int MaxIcmpFlows = 1024;

    public Inspector(InspectorOptions options)
        : this(options, new AddressNames())
    {
    }

    /// <summary>With the gateway's shared address → name view (the policy's dns rules read the same one).</summary>
    internal Inspector(InspectorOptions options, AddressNames names)
    {
        Options = options;
        _names = names;
        _flows = new(options.MaxFlows);
        _dns = new(options.MaxDns);
        _http = new(options.MaxHttp);
    }

    public InspectorOptions Options { get; }

    /// <summary>The gateway's rules, served beside the inspector's API (<c>/api/rules</c>).</summary>
    public Policy.PolicyTable? Policy { get; set; }

    /// <summary>Observations lost to a fault in a parser (the flow itself went on).</summary>
    public long Faults => Interlocked.Read(ref _faults);
    private long _faults;

    internal void Fault() => Interlocked.Increment(ref _faults);

    private long NextId() => Interlocked.Increment(ref _nextId);

    /// <summary>A new flow; the remote's DNS name comes from the forwarder's answers.</summary>
    public FlowRecord OpenFlow(string proto, uint guestIp, ushort guestPort, uint remoteIp, ushort remotePort, bool inbound = false) =>
        OpenFlow(proto, IpAddr.V4(guestIp), guestPort, IpAddr.V4(remoteIp), remotePort, inbound);

    /// <summary>A new flow of either family; the remote's name comes from the forwarder's A and AAAA answers.</summary>
    internal FlowRecord OpenFlow(string proto, IpAddr guestIp, ushort guestPort, IpAddr remoteIp, ushort remotePort, bool inbound = false)
    {
        var f = new FlowRecord(NextId(), proto, guestIp, guestPort, remoteIp, remotePort, _names.Find(remoteIp), inbound);
        f.LastTicks = f.StartTicks;
        lock (_gate)
        {
            _flows.Add(f);
        }
        Publish("flow-open", f);
        return f;
    }

    public void CloseFlow(FlowRecord f, FlowEnd how)
    {
        if (f.EndReason != FlowEnd.None)
        {
            return;
        }
        f.EndReason = how;
        f.End = DateTimeOffset.UtcNow;
        Publish("flow-end", f);
    }

    /// <summary>The per-stream tap of a TCP flow (HTTP and TLS), or null when payloads are not looked at.</summary>
    public StreamTap? TapFor(FlowRecord f) => Options.Http ? new StreamTap(this, f) : null;

    internal HttpExchange NewExchange(FlowRecord f)
    {
        var x = new HttpExchange(NextId(), f);
        lock (_gate)
        {
            _http.Add(x);
        }
        return x;
    }

    internal void ExchangeDone(HttpExchange x)
    {
        if (HasSubscribers)
        {
            Send(new InspectEvent("http", Http: HttpView.Of(x)));
        }
    }

    /// <summary>A forwarded echo request (engine thread).</summary>
    public void IcmpEcho(uint guestIp, uint destination, int bytes, bool reply)
    {
        ulong key = ((ulong)guestIp << 32) | destination;
        long now = Stopwatch.GetTimestamp();
        FlowRecord? f;
        lock (_gate)
        {
            if (_icmp.TryGetValue(key, out f) && ElapsedMs(f.LastTicks, now) > IcmpIdleMs)
            {
                _icmp.Remove(key);
                f = null;
            }
            if (f is null)
            {
                if (reply)
                {
                    return;
                }
                if (_icmp.Count >= MaxIcmpFlows)
                {
                    ExpireIcmp(now, all: true);
                }
                f = new FlowRecord(NextId(), "icmp", IpAddr.V4(guestIp), 0, IpAddr.V4(destination), 0, _names.Find(IpAddr.V4(destination)), inbound: false) { LastTicks = now };
                _flows.Add(f);
                _icmp[key] = f;
            }
        }
        if (reply)
        {
            f.PacketsIn++;
            f.BytesIn += bytes;
        }
        else
        {
            f.PacketsOut++;
            f.BytesOut += bytes;
        }
        f.LastTicks = now;
    }

    /// <summary>Ends echo exchanges idle past <see cref="IcmpIdleMs"/> (under the lock).</summary>
    private void ExpireIcmp(long now, bool all)
    {
        List<ulong>? done = null;
        foreach (KeyValuePair<ulong, FlowRecord> kv in _icmp)
        {
            if (all || ElapsedMs(kv.Value.LastTicks, now) > IcmpIdleMs)
            {
                (done ??= []).Add(kv.Key);
            }
        }
        foreach (ulong k in done ?? [])
        {
            _icmp.Remove(k, out FlowRecord? f);
            if (f is not null && f.EndReason == FlowEnd.None)
            {
                f.EndReason = FlowEnd.Timeout;
                f.End = f.Start.AddMilliseconds(ElapsedMs(f.StartTicks, f.LastTicks));
            }
        }
    }

    /// <summary>
    /// One answered (or unanswered) query: logged, and its A and AAAA records teach the address → name view that flows are
    /// named from. <paramref name="reply"/> is read, never kept.
    /// </summary>
    public void Dns(uint client, string name, ushort type, ReadOnlySpan<byte> reply, string source, double latencyMs, bool cacheHit)
    {
        string rcode = "none";
        string answer = "";
        if (reply.Length >= DnsMessage.HeaderLength && DnsMessage.TryParse(reply, out DnsMessage m))
        {
            rcode = RcodeName(reply[3] & 0x0F);
            Span<IpAddr> addresses = stackalloc IpAddr[16];
            int n = DnsAnswers.ReadAddresses(reply, addresses, out int records);
            var text = new System.Text.StringBuilder();
            for (int i = 0; i < n; i++)
            {
                _names.Add(addresses[i], name);
                text.Append(i == 0 ? "" : ", ").Append(addresses[i]);
            }
            if (records > n)
            {
                text.Append(n == 0 ? "" : ", ").Append(records - n).Append(records - n == 1 ? " other record" : " other records");
            }
            answer = text.ToString();
            _ = m;
        }
        var e = new DnsEntry(NextId(), DateTimeOffset.UtcNow, Ip4.Format(client), name, TypeName(type), answer, rcode, source, Math.Round(latencyMs, 3), cacheHit);
        lock (_gate)
        {
            _dns.Add(e);
        }
        if (HasSubscribers)
        {
            Send(new InspectEvent("dns", Dns: e));
        }
    }

    public List<FlowView> Flows()
    {
        var list = new List<FlowRecord>();
        lock (_gate)
        {
            ExpireIcmp(Stopwatch.GetTimestamp(), all: false);
            _flows.CopyTo(list);
        }
        var views = new List<FlowView>(list.Count);
        foreach (FlowRecord f in list)
        {
            views.Add(FlowView.Of(f));
        }
        return views;
    }

    public List<DnsEntry> DnsLog()
    {
        var list = new List<DnsEntry>();
        lock (_gate)
        {
            _dns.CopyTo(list);
        }
        return list;
    }

    public List<HttpExchange> Exchanges()
    {
        var list = new List<HttpExchange>();
        lock (_gate)
        {
            _http.CopyTo(list);
        }
        return list;
    }

    /// <summary>A live feed of events; bounded (the oldest is dropped for a slow reader). Dispose the lease to stop.</summary>
    public ChannelReader<InspectEvent> Subscribe(out IDisposable lease)
    {
        var c = Channel.CreateBounded<InspectEvent>(new BoundedChannelOptions(1024) { FullMode = BoundedChannelFullMode.DropOldest, SingleReader = true });
        lock (_subscribers)
        {
            _subscribers.Add(c);
            _hasSubscribers = true;
        }
        lease = new Lease(this, c);
        return c.Reader;
    }

    private sealed class Lease(Inspector owner, Channel<InspectEvent> channel) : IDisposable
    {
        public void Dispose()
        {
            lock (owner._subscribers)
            {
                owner._subscribers.Remove(channel);
                owner._hasSubscribers = owner._subscribers.Count > 0;
            }
            channel.Writer.TryComplete();
        }
    }

    private volatile bool _hasSubscribers;

    private bool HasSubscribers => _hasSubscribers;

    private void Publish(string kind, FlowRecord f)
    {
        if (HasSubscribers)
        {
            Send(new InspectEvent(kind, Flow: FlowView.Of(f)));
        }
    }

    private void Send(InspectEvent e)
    {
        lock (_subscribers)
        {
            foreach (Channel<InspectEvent> c in _subscribers)
            {
                c.Writer.TryWrite(e);
            }
        }
    }

    internal static double ElapsedMs(long from, long to) => from == 0 || to == 0 ? 0 : (to - from) * 1000.0 / Stopwatch.Frequency;

    private static string RcodeName(int rcode) => rcode switch
    {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "RCODE" + rcode,
    };

    internal static string TypeName(ushort type) => type switch
    {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        65 => "HTTPS",
        255 => "ANY",
        _ => "TYPE" + type,
    };
}

/// <summary>
/// The forwarder's view of which name gave which address (the latest answer wins), bounded: at the cap it starts over,
/// so a guest resolving millions of names costs at most <see cref="Max"/> entries.
/// </summary>
internal sealed class AddressNames
{
    private const int Max = 8192;
    private readonly Dictionary<IpAddr, string> _map = [];

    public void Add(IpAddr address, string name)
    {
        lock (_map)
        {
            if (_map.Count >= Max)
            {
                _map.Clear();
            }
            _map[address] = name;
        }
    }

    /// <summary>Learns the A and AAAA records of a forwarder's <paramref name="reply"/> to a query for <paramref name="name"/>.</summary>
    public void Learn(string name, ReadOnlySpan<byte> reply)
    {
        Span<IpAddr> addresses = stackalloc IpAddr[16];
        int n = DnsAnswers.ReadAddresses(reply, addresses, out _);
        for (int i = 0; i < n; i++)
        {
            Add(addresses[i], name);
        }
    }

    /// <summary>The name a flow's destination was resolved from, for the policy's dns conditions.</summary>
    public string? Of(Policy.FlowFacts f) => Find(f.Ipv6 ? IpAddr.V6(f.RemoteIp6) : IpAddr.V4(f.RemoteIp));

    public string? Find(IpAddr address)
    {
        lock (_map)
        {
            return _map.GetValueOrDefault(address);
        }
    }
}

/// <summary>Reads a DNS response's A (RFC 1035 §3.4.1) and AAAA (RFC 3596 §2.2) records, checked at every step; never throws.</summary>
internal static class DnsAnswers
{
    private const ushort TypeA = 1, TypeAaaa = 28, ClassIn = 1;

    public static int ReadAddresses(ReadOnlySpan<byte> b, Span<IpAddr> into, out int records)
    {
        records = 0;
        if (b.Length < DnsMessage.HeaderLength)
        {
            return 0;
        }
        int questions = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(4));
        int answers = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(6));
        int i = DnsMessage.HeaderLength;
        for (int q = 0; q < questions; q++)
        {
            if (!SkipName(b, ref i) || i + 4 > b.Length)
            {
                return 0;
            }
            i += 4;
        }
        int n = 0;
        for (int r = 0; r < answers; r++)
        {
            if (!SkipName(b, ref i) || i + 10 > b.Length)
            {
                break;
            }
            ushort type = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i));
            ushort @class = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i + 2));
            int rdlen = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(i + 8));
            i += 10;
            if (i + rdlen > b.Length)
            {
                break;
            }
            records++;
            if (@class == ClassIn && n < into.Length && (type, rdlen) is (TypeA, 4) or (TypeAaaa, 16))
            {
                into[n++] = rdlen == 4 ? IpAddr.V4(BinaryPrimitives.ReadUInt32BigEndian(b.Slice(i))) : IpAddr.V6(BinaryPrimitives.ReadUInt128BigEndian(b.Slice(i)));
            }
            i += rdlen;
        }
        return n;
    }

    private static bool SkipName(ReadOnlySpan<byte> b, ref int i)
    {
        for (int labels = 0; i < b.Length && labels < 128; labels++)
        {
            byte len = b[i];
            if (len == 0)
            {
                i++;
                return true;
            }
            if ((len & 0xC0) == 0xC0)
            {
                i += 2;
                return i <= b.Length;
            }
            if ((len & 0xC0) != 0)
            {
                return false;
            }
            i += 1 + len;
        }
        return false;
    }
}
