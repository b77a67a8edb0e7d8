using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Services;

/// <summary>
/// The DNS forwarder at the gateway (RFC 1035 §4.2): answers the built-in host names itself and passes every other
/// query to the upstreams unchanged, returning the upstream's reply byte for byte (NXDOMAIN, SOA, every record type).
/// A fresh socket per query gives source-port entropy (RFC 5452 §9.2). Positive and negative answers are cached for
/// at most their smallest TTL, capped, in a bounded table. Queries waiting on an upstream are bounded per guest and in
/// all (<see cref="MaxInFlightPerClient"/>, <see cref="MaxInFlightTotal"/>): each holds a socket and a receive buffer
/// for up to two attempts per upstream, so a guest flooding queries at a silent upstream would otherwise pile up
/// thousands of descriptors and hundreds of megabytes. A query beyond the bound is answered at once with SERVFAIL
/// (RFC 1035 §4.1.1, RCODE 2), which resolvers treat as "try again later or elsewhere".
/// </summary>
internal sealed partial class DnsForwarder
{
    private const int MaxCacheEntries = 1024;
    private const uint MaxCacheTtl = 300;
    /// <summary>TTL of local answers: short, since the hosts file and the records can change under them.</summary>
    private const uint LocalTtl = 60;
    private static readonly TimeSpan AttemptTimeout = TimeSpan.FromSeconds(2);
    /// <summary>
    /// Upstream queries one guest (source address) may have in flight. A busy resolver (a container host starting
    /// hundreds of lookups at once) stays well below it; a flood does not get past it.
    /// </summary>
    internal const int MaxInFlightPerClient = 256;
    /// <summary>Upstream queries in flight from all guests: at most this many sockets and 64 KiB receive buffers.</summary>
    internal const int MaxInFlightTotal = 1024;
    /// <summary>Largest UDP DNS message (RFC 6891 §6.2.5 allows EDNS payloads up to 65,535 bytes).</summary>
    private const int MaxUdpMessage = 65535;

    private readonly IReadOnlyList<IPEndPoint> _fixedUpstreams;
    private readonly FollowedFile<List<IPEndPoint>>? _resolvConf;
    private readonly LocalNames _names;
    private readonly ILogger _log;
    private readonly object _cacheGate = new();
    private readonly Dictionary<string, (byte[] Response, long Expires)> _cache = [];
    private readonly object _inFlightGate = new();
    private readonly Dictionary<uint, int> _inFlight = [];
    private int _inFlightTotal;

    /// <summary>
    /// Forwards to <paramref name="upstreams"/>, or when there are none to the nameservers of
    /// <paramref name="resolvConf"/>, followed as it changes: a VPN that connects on the host rewrites it, and the
    /// guests' lookups move with the host's at once, with the cache dropped (answers from the old view may differ).
    /// </summary>
    public DnsForwarder(IReadOnlyList<IPEndPoint> upstreams, string? resolvConf, LocalNames names, ILogger log)
    {
        _fixedUpstreams = upstreams;
        _names = names;
        _log = log;
        if (upstreams.Count == 0 && resolvConf is not null)
        {
            _resolvConf = new(resolvConf, ParseResolvConf, []);
            _resolvConf.Changed += now =>
            {
                lock (_cacheGate)
                {
                    _cache.Clear();
                }
                LogUpstreamsChanged(_log, _resolvConf.Path, now.Count == 0 ? "none" : string.Join(", ", now));
            };
        }
    }

    /// <summary>The inspector's DNS log and address → name view (null: off).</summary>
    public Kit.VpnKit.Inspect.Inspector? Inspector { get; set; }

    /// <summary>
    /// Which name gave which address (flow names, the policy's dns rules): each answer is learned here, by the inspector
    /// as it logs the answer when it is on (it holds this same view), else directly.
    /// </summary>
    public Kit.VpnKit.Inspect.AddressNames? Names { get; set; }

    /// <summary>The upstreams now: the fixed ones, or resolv.conf's as last read.</summary>
    public IReadOnlyList<IPEndPoint> Upstreams => _resolvConf?.Current ?? _fixedUpstreams;

    /// <summary>Queries answered with SERVFAIL because the in-flight bound was reached.</summary>
    public long Refused { get; private set; }

    /// <summary>Upstream queries in flight now (for tests and the inspector).</summary>
    public int InFlight
    {
        get
        {
            lock (_inFlightGate)
            {
                return _inFlightTotal;
            }
        }
    }

    private bool TryEnter(uint client)
    {
        lock (_inFlightGate)
        {
            int mine = _inFlight.GetValueOrDefault(client);
            if (mine >= MaxInFlightPerClient || _inFlightTotal >= MaxInFlightTotal)
            {
                Refused++;
                return false;
            }
            _inFlight[client] = mine + 1;
            _inFlightTotal++;
            return true;
        }
    }

    private void Leave(uint client)
    {
        lock (_inFlightGate)
        {
            int mine = _inFlight[client];
            if (mine == 1)
            {
                _inFlight.Remove(client); // the table holds only guests with queries in flight
            }
            else
            {
                _inFlight[client] = mine - 1;
            }
            _inFlightTotal--;
        }
    }

    /// <summary>
    /// Resolves one query message; null when no answer can be given (the client will retry). A query that came over
    /// TCP goes upstream over TCP (RFC 7766 §5: the client chose TCP, usually because the UDP answer was truncated),
    /// falling back to UDP for an upstream that does not take TCP. <paramref name="client"/> is the guest's address (its
    /// in-flight bound); beyond the bound the answer is an immediate SERVFAIL.
    /// </summary>
    public async Task<byte[]?> ResolveAsync(byte[] query, bool overTcp = false, CancellationToken cancel = default, uint client = 0)
    {
        if (!DnsMessage.TryParse(query, out DnsMessage q) || q.IsResponse || q.Opcode != 0)
        {
            return null;
        }
        ushort id = q.Id;
        long started = Stopwatch.GetTimestamp();
        // Before the cache: a changed resolv.conf drops the cache as it is noticed, so no answer from the old view is served.
        IReadOnlyList<IPEndPoint> upstreams = Upstreams;
        string? cacheKey = null;
        string? questionName = null;
        ushort questionType = 0;
        if (q.TryReadQuestion(out ReadOnlySpan<byte> name, out ushort type, out ushort @class, out int end))
        {
            bool printable = DnsMessage.TryGetDottedName(name, out string dotted);
            questionName = printable ? dotted : "(unprintable name)";
            questionType = type;
            if (printable && _names.TryFind(dotted, out IPAddress[] local))
            {
                return Logged(LocalAnswer(query, end, type, @class, local), "local", cacheHit: false);
            }
            cacheKey = CacheKey(name, type, @class);
            lock (_cacheGate)
            {
                if (_cache.TryGetValue(cacheKey, out var hit) && hit.Expires > Environment.TickCount64)
                {
                    byte[] copy = (byte[])hit.Response.Clone();
                    BinaryPrimitives.WriteUInt16BigEndian(copy, id);
                    return Logged(copy, "cache", cacheHit: true);
                }
            }
        }
        if (upstreams.Count == 0)
        {
            return Logged(null, "no upstream", cacheHit: false);
        }
        if (!TryEnter(client))
        {
            return Logged(ServerFailure(query), "refused (queries in flight)", cacheHit: false);
        }
        try
        {
            (byte[]? reply, IPEndPoint? from) = await AskUpstreamsAsync(upstreams, query, id, cacheKey, overTcp, cancel).ConfigureAwait(false);
            return Logged(reply, from is null ? "no answer" : (overTcp ? "tcp:" : "") + from.ToString(), cacheHit: false);
        }
        finally
        {
            Leave(client);
        }

        // The inspector's DNS log: what was asked, what came back, from where, how long it took.
        byte[]? Logged(byte[]? reply, string source, bool cacheHit)
        {
            if (Inspector is { } inspector && questionName is not null)
            {
                inspector.Dns(client, questionName, questionType, reply, source, Stopwatch.GetElapsedTime(started).TotalMilliseconds, cacheHit);
            }
            else if (Names is { } names && questionName is not null && reply is not null)
            {
                names.Learn(questionName, reply);
            }
            return reply;
        }
    }

    private async Task<(byte[]? Reply, IPEndPoint? From)> AskUpstreamsAsync(IReadOnlyList<IPEndPoint> upstreams, byte[] query, ushort id, string? cacheKey, bool overTcp,
        CancellationToken cancel)
    {
        foreach (IPEndPoint upstream in upstreams)
        {
            byte[]? reply = overTcp ? await AskTcpAsync(upstream, query, id, cancel).ConfigureAwait(false) : null;
            reply ??= await AskAsync(upstream, query, id, cancel).ConfigureAwait(false);
            if (reply is null)
            {
                continue;
            }
            if (cacheKey is not null && DnsMessage.TryParse(reply, out DnsMessage r) && (r.Flags & 0x0200) == 0 && r.TryGetMinimumTtl(out uint ttl))
            {
                // Negative answers without an SOA have no TTL to honour (RFC 2308 §5): they are not cached.
                if (ttl != uint.MaxValue && ttl > 0)
                {
                    Store(cacheKey, reply, Math.Min(ttl, MaxCacheTtl));
                }
            }
            return (reply, upstream);
        }
        return (null, null);
    }

    private async Task<byte[]?> AskAsync(IPEndPoint upstream, byte[] query, ushort id, CancellationToken cancel)
    {
        using var socket = new Socket(upstream.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        // Pooled: a fresh 64 KiB array per query was most of a flood's memory.
        byte[] buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(MaxUdpMessage);
        try
        {
            await socket.ConnectAsync(upstream, cancel).ConfigureAwait(false);
            for (int attempt = 0; attempt < 2; attempt++)
            {
                await socket.SendAsync(query, SocketFlags.None, cancel).ConfigureAwait(false);
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancel);
                cts.CancelAfter(AttemptTimeout);
                try
                {
                    while (true)
                    {
                        int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cts.Token).ConfigureAwait(false);
                        if (n >= DnsMessage.HeaderLength && BinaryPrimitives.ReadUInt16BigEndian(buffer) == id && (buffer[2] & 0x80) != 0)
                        {
                            return buffer.AsSpan(0, n).ToArray();
                        }
                    }
                }
                catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
                {
                }
            }
        }
        catch (SocketException e)
        {
            LogUpstreamFailed(_log, upstream, e.Message);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
        return null;
    }

    /// <summary>One query over a fresh TCP connection (RFC 1035 §4.2.2: a two-byte length before each message).</summary>
    private async Task<byte[]?> AskTcpAsync(IPEndPoint upstream, byte[] query, ushort id, CancellationToken cancel)
    {
        using var socket = new Socket(upstream.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        cts.CancelAfter(AttemptTimeout * 2);
        try
        {
            await socket.ConnectAsync(upstream, cts.Token).ConfigureAwait(false);
            socket.NoDelay = true;
            byte[] framed = new byte[2 + query.Length];
            BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)query.Length);
            query.CopyTo(framed, 2);
            await socket.SendAsync(framed, SocketFlags.None, cts.Token).ConfigureAwait(false);
            byte[] length = new byte[2];
            if (!await ReadExactlyAsync(socket, length, cts.Token).ConfigureAwait(false))
            {
                return null;
            }
            byte[] reply = new byte[BinaryPrimitives.ReadUInt16BigEndian(length)];
            if (reply.Length < DnsMessage.HeaderLength || !await ReadExactlyAsync(socket, reply, cts.Token).ConfigureAwait(false)
                || BinaryPrimitives.ReadUInt16BigEndian(reply) != id || (reply[2] & 0x80) == 0)
            {
                return null;
            }
            return reply;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException && !cancel.IsCancellationRequested)
        {
            LogUpstreamFailed(_log, upstream, "TCP: " + e.Message);
            return null;
        }
    }

    /// <summary>Fills <paramref name="buffer"/>; false on end of stream first.</summary>
    internal static async Task<bool> ReadExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancel)
    {
        while (buffer.Length > 0)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancel).ConfigureAwait(false);
            if (n == 0)
            {
                return false;
            }
            buffer = buffer.Slice(n);
        }
        return true;
    }

    /// <summary>
    /// An answer too big for the link, cut to its header with TC set and no records, so the client retries over TCP
    /// (RFC 1035 §4.2.1, RFC 7766 §5); null if there is nothing to cut.
    /// </summary>
    public static byte[]? Truncated(byte[] answer)
    {
        if (answer.Length <= DnsMessage.HeaderLength)
        {
            return null;
        }
        byte[] truncated = answer.AsSpan(0, DnsMessage.HeaderLength).ToArray();
        truncated[2] |= 0x02;
        truncated.AsSpan(4).Clear();
        return truncated;
    }

    /// <summary>A SERVFAIL reply carrying the query's header and question (RFC 1035 §4.1.1, RCODE 2).</summary>
    public static byte[]? ServerFailure(byte[] query)
    {
        if (!DnsMessage.TryParse(query, out DnsMessage q) || q.IsResponse)
        {
            return null;
        }
        int end = q.TryReadQuestion(out _, out _, out _, out int e) ? e : DnsMessage.HeaderLength;
        byte[] r = query.AsSpan(0, end).ToArray();
        r[2] = (byte)(0x80 | (query[2] & 0x79)); // QR=1, opcode and RD kept, AA=TC=0
        r[3] = 0x82; // RA=1, RCODE=2
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(4), (ushort)(end > DnsMessage.HeaderLength ? 1 : 0));
        r.AsSpan(6, 6).Clear();
        return r;
    }

    /// <summary>
    /// An authoritative answer for a name the gateway knows (<see cref="LocalNames"/>): its IPv4 addresses for A, its
    /// IPv6 ones for AAAA (RFC 3596 §2.1), and for any other type, or a family the name has no address in, an empty
    /// NOERROR (no data: the name exists).
    /// </summary>
    private static byte[] LocalAnswer(byte[] query, int questionEnd, ushort type, ushort @class, IPAddress[] addresses)
    {
        AddressFamily family = type == 28 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork;
        IPAddress[] answers = @class == 1 && type is 1 or 28 ? [.. addresses.Where(a => a.AddressFamily == family).Take(32)] : [];
        int rdLength = family == AddressFamily.InterNetwork ? 4 : 16;
        byte[] r = new byte[questionEnd + (answers.Length * (12 + rdLength))];
        query.AsSpan(0, questionEnd).CopyTo(r);
        // QR=1, AA=1, keep RD, RA=1, RCODE=0.
        r[2] = (byte)(0x84 | (query[2] & 0x01));
        r[3] = 0x80;
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(4), 1);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(6), (ushort)answers.Length);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(10), 0);
        Span<byte> a = r.AsSpan(questionEnd);
        foreach (IPAddress address in answers)
        {
            BinaryPrimitives.WriteUInt16BigEndian(a, 0xC00C); // Pointer to the question's name.
            BinaryPrimitives.WriteUInt16BigEndian(a.Slice(2), type);
            BinaryPrimitives.WriteUInt16BigEndian(a.Slice(4), 1);
            BinaryPrimitives.WriteUInt32BigEndian(a.Slice(6), LocalTtl);
            BinaryPrimitives.WriteUInt16BigEndian(a.Slice(10), (ushort)rdLength);
            address.TryWriteBytes(a.Slice(12, rdLength), out _);
            a = a.Slice(12 + rdLength);
        }
        return r;
    }

    private void Store(string key, byte[] reply, uint ttl)
    {
        lock (_cacheGate)
        {
            if (_cache.Count >= MaxCacheEntries)
            {
                long now = Environment.TickCount64;
                var expired = new List<string>();
                foreach (var kv in _cache)
                {
                    if (kv.Value.Expires <= now)
                    {
                        expired.Add(kv.Key);
                    }
                }
                foreach (string k in expired)
                {
                    _cache.Remove(k);
                }
                if (_cache.Count >= MaxCacheEntries)
                {
                    _cache.Clear(); // Simple and bounded: a full cache of live entries starts over.
                }
            }
            _cache[key] = (reply, Environment.TickCount64 + (ttl * 1000L));
        }
    }

    private static string CacheKey(ReadOnlySpan<byte> name, ushort type, ushort @class)
    {
        Span<char> chars = stackalloc char[name.Length];
        for (int i = 0; i < name.Length; i++)
        {
            byte b = name[i];
            chars[i] = (char)(b is >= (byte)'A' and <= (byte)'Z' ? b | 0x20 : b);
        }
        return string.Concat(chars, $"/{type}/{@class}");
    }

    /// <summary>
    /// Upstreams from resolv.conf's nameserver lines (resolv.conf(5): at most three are used), port 53, of either family.
    /// A link-local IPv6 address without its interface (fe80::1, not fe80::1%eth0) names no one server and is skipped.
    /// </summary>
    internal static List<IPEndPoint> ParseResolvConf(string text)
    {
        var list = new List<IPEndPoint>();
        foreach (string line in text.Split('\n'))
        {
            string[] parts = line.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            if (list.Count < 3 && parts.Length >= 2 && parts[0] == "nameserver" && IPAddress.TryParse(parts[1], out IPAddress? ip)
                && !(ip.IsIPv6LinkLocal && ip.ScopeId == 0))
            {
                list.Add(new IPEndPoint(ip, 53));
            }
        }
        return list;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "DNS upstreams from {Path}: {Upstreams}")]
    private static partial void LogUpstreamsChanged(ILogger log, string path, string upstreams);

    [LoggerMessage(Level = LogLevel.Debug, Message = "DNS upstream {Upstream} failed: {Reason}")]
    private static partial void LogUpstreamFailed(ILogger log, IPEndPoint upstream, string reason);
}
