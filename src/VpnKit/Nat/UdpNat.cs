using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.Linux;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Policy;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// UDP NAT as vpnkit does it: one host socket per guest source (IP, port), endpoint-independent mapping and
/// filtering (replies from any remote come back, which keeps hole punching working). Flows idle past the timeout
/// are closed; at the cap the oldest quarter is closed at once, so chatty random-port guests cannot exhaust fds.
/// IPv6 flows (NAT66) are the same flows in the same table (one cap for both families), with an AF_INET6 socket that
/// carries IPv6 only (IPV6_V6ONLY: it cannot be used to reach or hear IPv4).
/// Refusals (docs/vpnkit.md, "NAT"): every flow socket queues its ICMP errors (<see cref="UdpErrorQueue"/>), and a port
/// unreachable the host answered one of the guest's datagrams with goes back to the guest as one (ICMP code 3, ICMPv6
/// code 4), except that the host alias's IPv6 address first falls back from the host's ::1 to its 127.0.0.1, as TCP does.
/// rate_kbps polices each direction of a flow (<see cref="TokenBucket.TryTake"/>).
/// </summary>
internal sealed partial class UdpNat : IDisposable
{
    private readonly EngineGate _gate;
    private readonly Func<uint, uint> _translateOut;
    private readonly Func<uint, uint> _translateIn;
    private readonly ILogger _log;
    private readonly object _flowsGate = new();
    private readonly Dictionary<(UInt128, ushort), Flow> _flows = [];
    private readonly int _maxFlows;
    private readonly long _idleMs;
    /// <summary>Reads the flows' error queues, under the engine lock (one reader, one payload buffer, for every flow).</summary>
    private readonly UdpErrorQueue _errors = new();
    private readonly byte[] _refused = new byte[65536];
    private bool _disposed;

    public UdpNat(EngineGate gate, Func<uint, uint> translateOut, Func<uint, uint> translateIn, ILogger log, int maxFlows = 1024, TimeSpan? idle = null)
    {
        _gate = gate;
        _translateOut = translateOut;
        _translateIn = translateIn;
        _log = log;
        _maxFlows = maxFlows;
        _idleMs = (long)(idle ?? TimeSpan.FromSeconds(60)).TotalMilliseconds;
    }

    /// <summary>Host-side IPv6 source → what the guest sees (the host's ::1 appears as the host alias).</summary>
    public Func<UInt128, UInt128> TranslateIn6 { get; init; } = ip => ip;

    /// <summary>Told of every IPv4 flow and datagram (null: the inspector is off; it does not record IPv6 yet).</summary>
    public Inspector? Inspector { get; set; }

    public int FlowCount
    {
        get
        {
            lock (_flowsGate)
            {
                return _flows.Count;
            }
        }
    }

    private sealed class Flow(IpAddr guestIp, ushort guestPort, Socket socket)
    {
        public readonly IpAddr GuestIp = guestIp;
        public readonly ushort GuestPort = guestPort;
        public readonly Socket Socket = socket;
        public long LastUsed;
        public readonly SocketAddress Target = new(socket.AddressFamily);
        public FlowRecord? Record;

        /// <summary>rate_kbps: the rule of the flow's latest datagram when it has a rate, and a bucket per direction.</summary>
        public PolicyRule? RateRule;
        public TokenBucket? Out;
        public TokenBucket? In;

        /// <summary>
        /// An IPv6 flow's ports of the host alias whose ::1 refused: their datagrams go to 127.0.0.1 through
        /// <see cref="Loopback4"/> (bound to 127.0.0.1, so it reaches and hears nothing else).
        /// </summary>
        public HashSet<ushort>? Loopback4Ports;
        public Socket? Loopback4;
        public SocketAddress? Loopback4Target;

        public void Close()
        {
            Socket.Dispose();
            Loopback4?.Dispose();
        }
    }

    /// <summary>Host-alias ports one IPv6 flow may move to 127.0.0.1; beyond them a refusal of ::1 is the guest's answer.</summary>
    private const int MaxLoopback4Ports = 64;

    /// <summary>
    /// A refused datagram's payload is whole in its ICMPv6 quote when shorter than this: Linux quotes at most the minimum
    /// MTU less the IPv6 and ICMPv6 headers (RFC 4443 §2.4(c)), which leaves 1,184 bytes after the quoted IPv6 and UDP headers.
    /// </summary>
    private const int WholeInIcmpv6Quote = 1280 - 40 - 8 - 40 - 8;

    private void End(Flow f, FlowEnd how)
    {
        if (f.Record is not null)
        {
            Inspector?.CloseFlow(f.Record, how);
        }
    }

    /// <summary>
    /// Called under the engine lock with a guest datagram; sends it from the flow's host socket. <paramref name="rule"/>:
    /// the rule that allowed it, if any (its rate_kbps polices the flow).
    /// </summary>
    public void Send(in UdpFlow flow, ReadOnlySpan<byte> payload, PolicyRule? rule = null) =>
        Send(IpAddr.V4(flow.GuestIp), flow.GuestPort, IpAddr.V4(flow.RemoteIp), IpAddr.V4(_translateOut(flow.RemoteIp)), flow.RemotePort, payload, rule);

    /// <summary>An IPv6 guest datagram (NAT66) to <paramref name="hostDestination"/>, the host-side address the NAT chose.</summary>
    public void Send6(in Udp6Flow flow, UInt128 hostDestination, ReadOnlySpan<byte> payload, PolicyRule? rule = null) =>
        Send(IpAddr.V6(flow.GuestIp), flow.GuestPort, IpAddr.V6(flow.RemoteIp), IpAddr.V6(hostDestination), flow.RemotePort, payload, rule);

    private void Send(IpAddr guest, ushort guestPort, IpAddr remote, IpAddr dst, ushort remotePort, ReadOnlySpan<byte> payload, PolicyRule? rule)
    {
        Flow? f;
        lock (_flowsGate)
        {
            if (!_flows.TryGetValue((guest.Value, guestPort), out f))
            {
                if (_flows.Count >= _maxFlows)
                {
                    EvictOldest(_flows.Count - (_maxFlows * 3 / 4));
                }
                Socket s;
                try
                {
                    s = guest.IsV4 ? new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                        : new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp) { DualMode = false };
                    s.Bind(new IPEndPoint(guest.IsV4 ? IPAddress.Any : IPAddress.IPv6Any, 0));
                    UdpErrorQueue.Enable(s);
                }
                catch (SocketException e)
                {
                    LogSocketFailed(_log, e.Message);
                    return;
                }
                f = new Flow(guest, guestPort, s)
                {
                    Record = Inspector?.OpenFlow("udp", guest, guestPort, remote, remotePort),
                };
                _flows[(guest.Value, guestPort)] = f;
                _ = ReceiveLoopAsync(f, f.Socket);
            }
            f.LastUsed = EngineGate.Now;
        }
        if (!Admit(f, rule, payload.Length))
        {
            return;
        }
        if (f.Record is { } r)
        {
            r.PacketsOut++;
            r.BytesOut += payload.Length;
        }
        if (!guest.IsV4 && dst.Value == UInt128.One && f.Loopback4Ports?.Contains(remotePort) == true)
        {
            SendTo(f, f.Loopback4!, f.Loopback4Target!, IpAddr.V4(Loopback), remotePort, payload);
            return;
        }
        SocketError sent = SendTo(f, f.Socket, f.Target, dst, remotePort, payload);
        if (sent is not (SocketError.Success or SocketError.ConnectionRefused) && !guest.IsV4 && dst.Value == UInt128.One && MoveToLoopback4(f, remotePort))
        {
            // The host cannot send to its ::1 at all (no IPv6 on its loopback): the host alias's port goes to 127.0.0.1.
            SendTo(f, f.Loopback4!, f.Loopback4Target!, IpAddr.V4(Loopback), remotePort, payload);
        }
    }

    private const uint Loopback = 0x7F000001;

    /// <summary>
    /// Sends from one of the flow's sockets. A refusal of an earlier datagram may be pending on it (IP_RECVERR sets the
    /// socket's error, and the kernel fails the next send with it before sending): then the queue is read, which answers
    /// that refusal, and the send is made once more.
    /// </summary>
    private SocketError SendTo(Flow f, Socket socket, SocketAddress target, IpAddr dst, ushort port, ReadOnlySpan<byte> payload)
    {
        WriteAddress(target, dst, port);
        SocketError error = SocketError.Success;
        for (int attempt = 0; attempt < 2; attempt++)
        {
            try
            {
                socket.SendTo(payload, SocketFlags.None, target);
                return SocketError.Success;
            }
            catch (SocketException e) when (attempt == 0 && IsQueuedError(e.SocketErrorCode))
            {
                error = e.SocketErrorCode;
                DrainErrors(f, socket);
            }
            catch (SocketException e)
            {
                // An unreachable destination or a full buffer loses this datagram, as the network would.
                return e.SocketErrorCode;
            }
            catch (ObjectDisposedException)
            {
                return SocketError.Shutdown;
            }
        }
        return error;
    }

    /// <summary>
    /// rate_kbps for a guest datagram: the flow takes the rate of the rule that allowed it (new buckets when the rule
    /// changes; none when it has no rate), and the datagram goes only if the outbound bucket holds it; a drop is counted.
    /// </summary>
    private static bool Admit(Flow f, PolicyRule? rule, int bytes)
    {
        long now = EngineGate.Now;
        if (rule is not { Impair.RateKbps: > 0 })
        {
            f.RateRule = null;
            f.Out = f.In = null;
            return true;
        }
        if (!ReferenceEquals(f.RateRule, rule))
        {
            f.RateRule = rule;
            f.Out = new TokenBucket(rule.Impair.RateKbps, now);
            f.In = new TokenBucket(rule.Impair.RateKbps, now);
        }
        if (f.Out!.TryTake(bytes, now))
        {
            return true;
        }
        rule.CountDrop();
        rule.AddBytes(-bytes); // counted as carried when the rule allowed it; the rate did not carry it
        return false;
    }

    /// <summary>The socket errors an ICMP error leaves pending (ip(7): IP_RECVERR makes them hard errors, once each).</summary>
    private static bool IsQueuedError(SocketError e) => e is SocketError.ConnectionRefused or SocketError.HostUnreachable
        or SocketError.NetworkUnreachable or SocketError.MessageSize or SocketError.AccessDenied or SocketError.ConnectionReset
        or SocketError.HostDown or SocketError.NetworkDown or SocketError.ProtocolOption;

    /// <summary>
    /// Reads what the socket's error queue holds (at most a bounded number per call) and answers each port unreachable;
    /// under the engine lock, which also serialises the one reader.
    /// </summary>
    private void DrainErrors(Flow f, Socket socket)
    {
        lock (_gate.Sync)
        {
            if (_disposed)
            {
                return;
            }
            for (int i = 0; i < 64 && _errors.TryRead(socket, _refused, out UdpErrorQueue.QueuedError e); i++)
            {
                if (e.Errno == UdpErrorQueue.ECONNREFUSED)
                {
                    Refused(f, socket, e.Destination, _refused.AsSpan(0, e.PayloadLength));
                }
            }
        }
    }

    /// <summary>
    /// The host answered a datagram of <paramref name="f"/> to <paramref name="to"/> with a port unreachable. The host alias's
    /// IPv6 address falls back from ::1 to 127.0.0.1 for this port (the refused datagram is sent again when the quote held
    /// it whole); otherwise the guest gets the port unreachable, from the address it sent to.
    /// </summary>
    private void Refused(Flow f, Socket socket, IPEndPoint to, ReadOnlySpan<byte> payload)
    {
        ushort port = (ushort)to.Port;
        long now = EngineGate.Now;
        if (f.GuestIp.IsV4)
        {
            uint remote = _translateIn(FromIPv4(to.Address));
            _gate.Engine.SendPortUnreachable(new UdpFlow(f.GuestIp.Ipv4, f.GuestPort, remote, port), payload, now);
            return;
        }
        if (socket == f.Socket && to.Address.Equals(IPAddress.IPv6Loopback) && MoveToLoopback4(f, port))
        {
            if (payload.Length < WholeInIcmpv6Quote)
            {
                SendTo(f, f.Loopback4!, f.Loopback4Target!, IpAddr.V4(Loopback), port, payload);
            }
            return;
        }
        UInt128 from = socket == f.Socket ? TranslateIn6(IpAddr.From(to.Address).Value) : TranslateIn6(UInt128.One);
        _gate.Engine.SendPortUnreachable6(new Udp6Flow(f.GuestIp.Value, f.GuestPort, from, port), payload, now);
    }

    /// <summary>Sends the host alias's <paramref name="port"/> of this IPv6 flow to 127.0.0.1 from now on; false when it cannot.</summary>
    private bool MoveToLoopback4(Flow f, ushort port)
    {
        if (f.Loopback4 is null)
        {
            try
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
                UdpErrorQueue.Enable(s);
                f.Loopback4 = s;
                f.Loopback4Target = new SocketAddress(AddressFamily.InterNetwork);
                f.Loopback4Ports = [];
                _ = ReceiveLoopAsync(f, s);
            }
            catch (SocketException e)
            {
                LogSocketFailed(_log, e.Message);
                return false;
            }
        }
        return f.Loopback4Ports!.Contains(port) || (f.Loopback4Ports.Count < MaxLoopback4Ports && f.Loopback4Ports.Add(port));
    }

    private static uint FromIPv4(IPAddress a)
    {
        Span<byte> b = stackalloc byte[4];
        return a.TryWriteBytes(b, out int n) && n == 4 ? BinaryPrimitives.ReadUInt32BigEndian(b) : 0;
    }

    /// <summary>
    /// Datagrams from one of the flow's sockets to the guest: its own socket, or an IPv6 flow's 127.0.0.1 socket, whose
    /// replies the guest sees from the host alias's IPv6 address. A receive that fails with a queued ICMP error reads the
    /// queue and goes on; only a closed socket ends the loop.
    /// </summary>
    private async Task ReceiveLoopAsync(Flow f, Socket socket)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(65536);
        var from = new SocketAddress(socket.AddressFamily);
        bool loopback4 = socket != f.Socket;
        try
        {
            while (true)
            {
                int n;
                try
                {
                    n = await socket.ReceiveFromAsync(buffer, SocketFlags.None, from).ConfigureAwait(false);
                }
                catch (SocketException e) when (IsQueuedError(e.SocketErrorCode))
                {
                    DrainErrors(f, socket);
                    continue;
                }
                ReadAddress(from, out IpAddr ip, out ushort port);
                lock (_gate.Sync)
                {
                    if (f.In is { } bucket && !bucket.TryTake(n, EngineGate.Now))
                    {
                        f.RateRule?.CountDrop();
                        continue;
                    }
                    if (f.GuestIp.IsV4)
                    {
                        _gate.Engine.SendUdp(new UdpFlow(f.GuestIp.Ipv4, f.GuestPort, _translateIn(ip.Ipv4), port), buffer.AsSpan(0, n), EngineGate.Now);
                    }
                    else
                    {
                        UInt128 remote = TranslateIn6(loopback4 ? UInt128.One : ip.Value);
                        _gate.Engine.SendUdp6(new Udp6Flow(f.GuestIp.Value, f.GuestPort, remote, port), buffer.AsSpan(0, n), EngineGate.Now);
                    }
                    if (f.Record is { } r)
                    {
                        r.PacketsIn++;
                        r.BytesIn += n;
                    }
                }
                f.LastUsed = EngineGate.Now;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Closes flows idle longer than the timeout; called periodically by the driver.</summary>
    public void Expire()
    {
        long now = EngineGate.Now;
        lock (_flowsGate)
        {
            List<(UInt128, ushort)>? dead = null;
            foreach (KeyValuePair<(UInt128, ushort), Flow> kv in _flows)
            {
                if (now - kv.Value.LastUsed > _idleMs)
                {
                    (dead ??= []).Add(kv.Key);
                }
            }
            if (dead is null)
            {
                return;
            }
            foreach ((UInt128, ushort) k in dead)
            {
                _flows.Remove(k, out Flow? f);
                if (f is not null)
                {
                    End(f, FlowEnd.Timeout);
                    f.Close();
                }
            }
        }
    }

    private void EvictOldest(int count)
    {
        var all = new List<KeyValuePair<(UInt128, ushort), Flow>>(_flows);
        all.Sort((a, b) => a.Value.LastUsed.CompareTo(b.Value.LastUsed));
        for (int i = 0; i < count && i < all.Count; i++)
        {
            _flows.Remove(all[i].Key);
            End(all[i].Value, FlowEnd.Timeout);
            all[i].Value.Close();
        }
    }

    /// <summary>Fills a struct sockaddr_in or sockaddr_in6 (ip(7), ipv6(7)): the port and address in network order.</summary>
    internal static void WriteAddress(SocketAddress a, IpAddr ip, ushort port)
    {
        Span<byte> b = a.Buffer.Span;
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(2), port);
        if (a.Family == AddressFamily.InterNetwork)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.Slice(4), ip.Ipv4);
        }
        else
        {
            BinaryPrimitives.WriteUInt128BigEndian(b.Slice(8), ip.Value);
        }
    }

    internal static void ReadAddress(SocketAddress a, out IpAddr ip, out ushort port)
    {
        ReadOnlySpan<byte> b = a.Buffer.Span;
        port = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(2));
        ip = a.Family == AddressFamily.InterNetwork ? IpAddr.V4(BinaryPrimitives.ReadUInt32BigEndian(b.Slice(4))) : IpAddr.V6(BinaryPrimitives.ReadUInt128BigEndian(b.Slice(8)));
    }

    public void Dispose()
    {
        lock (_flowsGate)
        {
            foreach (Flow f in _flows.Values)
            {
                End(f, FlowEnd.Closed);
                f.Close();
            }
            _flows.Clear();
        }
        lock (_gate.Sync)
        {
            _disposed = true;
            _errors.Dispose();
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "cannot open a UDP socket: {Reason}")]
    private static partial void LogSocketFailed(ILogger log, string reason);
}
