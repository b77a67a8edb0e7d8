using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Policy;
using Kit.VpnKit.Services;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// The host side of every guest flow: decides where each goes (the host alias 192.168.65.2 means the host's
/// 127.0.0.1, and its IPv6 address the host's ::1; the gateway's port 53 is the DNS forwarder; anything else is the real
/// destination, IPv6 ones through IPv6 sockets: NAT66) and owns the
/// sockets. Engine callbacks arrive under the engine lock, inside an engine call: they only start connects and queue
/// TCP proxies; <see cref="RunQueued"/> (same lock, after the engine call returns) then moves their bytes on the same
/// thread.
/// </summary>
internal sealed partial class NatHost : IFlowHandler, IDisposable
{
    private const int ConnectTimeoutMs = 15_000;
    private readonly EngineGate _gate;
    private readonly GatewayOptions _o;
    private readonly DnsForwarder _dns;
    private readonly ILogger _log;
    private readonly HashSet<TcpProxy> _proxies = [];
    private readonly List<TcpProxy> _runList = [];
    /// <summary>Connects in flight, oldest first: each has the same timeout, so the head expires first.</summary>
    private readonly Queue<TcpProxy> _connecting = new();

    public NatHost(EngineGate gate, GatewayOptions options, DnsForwarder dns, ILogger log)
    {
        _gate = gate;
        _o = options;
        _dns = dns;
        _log = log;
        Udp = new UdpNat(gate, TranslateOut, TranslateIn, log) { TranslateIn6 = TranslateIn6 };
    }

    public UdpNat Udp { get; }

    /// <summary>The inspector (<c>--ui</c>), told of every flow; null when off.</summary>
    public Inspector? Inspector
    {
        get => _inspector;
        init
        {
            _inspector = value;
            Udp.Inspector = value;
        }
    }

    private readonly Inspector? _inspector;

    /// <summary>The rules (<c>--policy</c>, <c>/api/rules</c>); null: none, ever.</summary>
    public PolicyTable? Policy { get; init; }

    /// <summary>Proxies waiting for a time (rate refill, delay line), earliest first; stale entries are skipped.</summary>
    private readonly PriorityQueue<TcpProxy, long> _wakes = new();

    /// <summary>Runs <paramref name="p"/> again at <paramref name="when"/> (under the engine lock).</summary>
    internal void WakeAt(TcpProxy p, long when)
    {
        if (p.WakeAt != 0 && p.WakeAt <= when)
        {
            return;
        }
        p.WakeAt = when;
        _wakes.Enqueue(p, when);
    }

    /// <summary>The rule for a new flow (counted), or null: allowed as is. Traffic to the gateway's own services is not a flow.</summary>
    private PolicyRule? Decide(RuleProto proto, IpAddr remoteIp, ushort remotePort, out bool needStream)
    {
        needStream = false;
        PolicyRule? rule = Policy is { IsEmpty: false } table ? table.Decide(new FlowFacts(proto, remoteIp.Ipv4, remotePort, RemoteIp6: remoteIp.IsV4 ? 0 : remoteIp.Value), out needStream) : null;
        Captures?.Decided(proto, remoteIp, remotePort, rule, needStream); // a rule's pcap takes the frame that asked (RuleFlows)
        return rule;
    }

    /// <summary>The inspector's live captures, told of every decision for the captures of one rule; null without <c>--ui</c>.</summary>
    public Capture.LiveCaptures? Captures { get; set; }

    /// <summary>
    /// Whether a datagram or echo request from the guest goes on (null, with the <paramref name="rule"/> that let it,
    /// if any): its rule allows it and loss_pct spares it; otherwise what the engine does about it: nothing (deny, loss)
    /// or an unreachable (reject).
    /// </summary>
    private FlowVerdict? Stops(RuleProto proto, IpAddr remoteIp, ushort remotePort, int bytes, out PolicyRule? rule)
    {
        if ((rule = Decide(proto, remoteIp, remotePort, out _)) is null)
        {
            return null;
        }
        if (rule.Action != RuleAction.Allow)
        {
            return rule.Action == RuleAction.Reject ? FlowVerdict.Rejected : FlowVerdict.Taken;
        }
        if (rule.Impair.LossPct > 0 && Random.Shared.NextDouble() * 100 < rule.Impair.LossPct)
        {
            rule.CountDrop();
            return FlowVerdict.Taken;
        }
        rule.AddBytes(bytes);
        return null;
    }

    /// <summary>The event loop that watches the TCP proxies' sockets; set before the first connection.</summary>
    public EventLoop? Loop { get; set; }

    /// <summary>Published UDP ports: guest replies to them go back to the host client, not through the NAT.</summary>
    public List<UdpPublisher> UdpPublishers { get; } = [];
    public IcmpForwarder? Icmp { get; set; }

    /// <summary>ICMPv6 echo forwarding (NAT66); null when no ICMPv6 socket opens (then the host alias answers itself).</summary>
    public IcmpForwarder? Icmp6 { get; set; }

    /// <summary>The loopback listener that answers DNS over TCP for the gateway; null until started.</summary>
    public IPEndPoint? DnsTcp { get; set; }

    /// <summary>The proxy relay (explicit 192.168.65.1:3128, transparent 80/443 through upstream proxies); null until started.</summary>
    public ProxyRelay? Relay { get; set; }

    /// <summary>
    /// What the proxy relay dials for a guest-visible address when it goes direct, by the rules a guest's own
    /// connection meets (host alias and 127/8 → the host's loopback when allowed, never the gateway or guest subnet,
    /// refused addresses refused, counted); 0 when refused.
    /// </summary>
    internal uint HostAddressFor(uint ip) => (ip >> 24) == 127
        ? Refused(_o.HostIp) ? 0 : ip
        : ip == 0 || ip == _o.GatewayIp || (_o.InSubnet(ip) && ip != _o.HostIp) || Refused(ip) ? 0 : TranslateOut(ip);

    /// <summary>Refuse the cloud metadata address (<see cref="VpnKitServerOptions.BlockMetadata"/>).</summary>
    public bool BlockMetadata { get; init; }

    /// <summary>The host alias reaches the host's loopback (<see cref="VpnKitServerOptions.HostLoopback"/>).</summary>
    public bool HostLoopback { get; init; } = true;

    /// <summary>Guest packets refused by <see cref="BlockMetadata"/> or <see cref="HostLoopback"/>: SYNs reset, datagrams and echoes dropped.</summary>
    public long Blocked => Interlocked.Read(ref _blocked);
    private long _blocked;

    /// <summary>
    /// 169.254.169.254: the link-local address (RFC 3927) where AWS, GCP, Azure, OpenStack and others serve instance
    /// metadata and credentials (AWS's IPv6 one is <see cref="MetadataIp6"/>).
    /// </summary>
    internal const uint MetadataIp = 0xA9FEA9FE;

    /// <summary>The reachability policy as a pure decision (tests check it without sending anything anywhere).</summary>
    internal static bool Refuses(bool blockMetadata, bool hostLoopback, uint hostIp, uint ip) =>
        (blockMetadata && ip == MetadataIp) || (!hostLoopback && ip == hostIp);

    /// <summary>Whether policy refuses guest traffic to <paramref name="ip"/> (a guest-visible destination); counted.</summary>
    private bool Refused(uint ip)
    {
        if (Refuses(BlockMetadata, HostLoopback, _o.HostIp, ip))
        {
            Interlocked.Increment(ref _blocked);
            return true;
        }
        return false;
    }

    /// <summary>Open TCP proxies (under the engine lock).</summary>
    public int ProxyCount => _proxies.Count;

    private const uint Loopback = 0x7F000001;

    /// <summary>Guest-visible destination → host destination.</summary>
    private uint TranslateOut(uint ip) => ip == _o.HostIp ? Loopback : ip;

    /// <summary>Host-side source → what the guest sees (the host's loopback appears as the host alias).</summary>
    private uint TranslateIn(uint ip) => (ip >> 24) == 127 ? _o.HostIp : ip;

    /// <summary>
    /// NAT66's host destination for a guest-visible IPv6 destination (the engine admits only the host alias and
    /// addresses off the link): the host alias is the host's ::1, as 192.168.65.2 is 127.0.0.1; 0 when the reachability
    /// switches refuse it (counted).
    /// </summary>
    private UInt128 HostAddress6(UInt128 ip)
    {
        if (Refuses6(BlockMetadata, HostLoopback, _o.HostIp6, ip))
        {
            Interlocked.Increment(ref _blocked);
            return 0;
        }
        return ip == _o.HostIp6 ? UInt128.One : ip;
    }

    /// <summary>Host-side IPv6 source → what the guest sees (the host's ::1 appears as the host alias).</summary>
    private UInt128 TranslateIn6(UInt128 ip) => ip == UInt128.One ? _o.HostIp6 : ip;

    /// <summary>fd00:ec2::254: the instance metadata service's IPv6 address (AWS), refused with the IPv4 one.</summary>
    internal static readonly UInt128 MetadataIp6 = new(0xFD00_0EC2_0000_0000UL, 0x254);

    /// <summary><see cref="Refuses"/> for IPv6 destinations.</summary>
    internal static bool Refuses6(bool blockMetadata, bool hostLoopback, UInt128 hostIp6, UInt128 ip) =>
        (blockMetadata && ip == MetadataIp6) || (!hostLoopback && ip == hostIp6);


    public void TcpConnectRequested(TcpSocket c)
    {
        if (!c.RemoteIp.IsV4)
        {
            if (c.RemoteIp.Value == _o.GatewayIp6 || c.RemoteIp.Value == _o.GatewayLinkLocal6)
            {
                // DNS over TCP (RFC 7766) to the gateway's IPv6 address (the engine admits port 53 only): the same
                // forwarder's TCP listener on the host's 127.0.0.1 as for 192.168.65.1:53; not a flow the policy sees.
                bool served = c.RemotePort == 53 && DnsTcp is not null;
                Open(c, served ? IpAddr.V4(FromAddress(DnsTcp!.Address)) : default, served ? (ushort)DnsTcp!.Port : (ushort)0, rule: null, refused: false, needStream: false);
                return;
            }
            UInt128 to = HostAddress6(c.RemoteIp.Value);
            bool streamRule = false;
            PolicyRule? rule6 = to == 0 ? null : Decide(RuleProto.Tcp, c.RemoteIp, c.RemotePort, out streamRule);
            Open(c, to == 0 ? default : IpAddr.V6(to), c.RemotePort, rule6, refused: to == 0, streamRule);
            return;
        }
        uint remote = c.RemoteIp.Ipv4;
        uint address = 0;
        ushort port = c.RemotePort;
        bool refused = false;
        if (remote == _o.GatewayIp)
        {
            if (c.RemotePort == 53 && DnsTcp is { } dns)
            {
                // DNS over TCP (RFC 7766): answered by the forwarder's TCP listener on loopback.
                address = FromAddress(dns.Address);
                port = (ushort)dns.Port;
            }
        }
        else if (!(_o.InSubnet(remote) && remote != _o.HostIp) && !(refused = Refused(remote)))
        {
            address = TranslateOut(remote);
        }
        // Upstream proxies: the gateway's 3128, and ports 80/443 of addresses dialled as they are (never the host alias
        // or a refused one), go to the proxy relay on loopback, which learns the flow by this socket's local port.
        RelayKind? relay = Relay?.Intercepts(remote == _o.GatewayIp, remote, c.RemotePort);
        if (relay is not null && (remote == _o.GatewayIp || (address != 0 && address == remote)))
        {
            (address, port) = (FromAddress(Relay!.EndPoint.Address), (ushort)Relay.EndPoint.Port);
        }
        else
        {
            relay = null;
        }
        // The policy decides here, unless a rule on sni/host needs the guest's first bytes (then the proxy decides).
        bool needStream = false;
        PolicyRule? rule = address == 0 || remote == _o.GatewayIp ? null : Decide(RuleProto.Tcp, c.RemoteIp, c.RemotePort, out needStream);
        TcpProxy? proxy = Open(c, address == 0 ? default : IpAddr.V4(address), port, rule, refused, needStream);
        if (proxy is not null && relay is RelayKind kind)
        {
            Relay!.Expect(proxy.LocalPort, kind, remote, c.RemotePort);
        }
    }

    /// <summary>
    /// Starts the host connect for a guest's SYN to <paramref name="address"/> (default: refused), as
    /// <paramref name="rule"/> allows; the guest gets its SYN-ACK or RST when the connect reports.
    /// </summary>
    private TcpProxy? Open(TcpSocket c, IpAddr address, ushort port, PolicyRule? rule, bool refused, bool needStream)
    {
        long now = EngineGate.Now;
        // The flow is known (with the name the guest resolved for its address) before the host connect starts.
        FlowRecord? flow = _inspector?.OpenFlow("tcp", c.GuestIp, c.GuestPort, c.RemoteIp, c.RemotePort);
        bool silent = rule?.Action == RuleAction.Deny;
        if (rule is { Action: not RuleAction.Allow })
        {
            address = default;
            refused = true;
        }
        TcpProxy? proxy = address.Value == 0 || Loop is null ? null : TcpProxy.Connect(_gate, this, Loop, c, address, port, now + ConnectTimeoutMs, _log);
        if (proxy is null)
        {
            if (flow is not null)
            {
                _inspector!.CloseFlow(flow, refused ? FlowEnd.Policy : FlowEnd.Refused);
            }
            c.CompleteConnect(connected: false, now, silent);
            return null;
        }
        if (rule is { Action: RuleAction.Allow, Impair.LossPct: > 0 })
        {
            c.Loss = new RuleLoss(rule);
        }
        if (needStream)
        {
            proxy.DecideOnStream(Policy!);
        }
        else if (rule is { Impair.ShapesStreams: true })
        {
            proxy.Apply(rule, now);
        }
        if (flow is not null)
        {
            proxy.Observe(_inspector!, flow);
        }
        _proxies.Add(proxy);
        _connecting.Enqueue(proxy);
        return proxy;
    }

    /// <summary>
    /// Adopts an accepted host socket for an engine-opened (published port) connection; <paramref name="fallback"/>, if
    /// any, opens the guest side again should the guest refuse <paramref name="c"/>.
    /// </summary>
    public void Adopt(TcpSocket c, Socket accepted, Func<long, TcpSocket?>? fallback = null)
    {
        TcpProxy? proxy = Loop is null ? null : TcpProxy.Adopt(_gate, this, Loop, c, accepted, fallback, _log);
        if (proxy is null)
        {
            accepted.Dispose();
            c.Abort(EngineGate.Now);
            return;
        }
        if (_inspector is not null)
        {
            proxy.Observe(_inspector, _inspector.OpenFlow("tcp", c.GuestIp, c.GuestPort, c.RemoteIp, c.RemotePort, inbound: true));
        }
        _proxies.Add(proxy);
    }

    internal void Forget(TcpProxy p) => _proxies.Remove(p);

    /// <summary>A proxy's connect finished; the queue drops it lazily.</summary>
    internal void ConnectDone(TcpProxy p) => p.ConnectDeadline = 0;

    /// <summary>When the NAT next has something to do: a held datagram due, a proxy's wake-up, a connect's timeout (absolute ms).</summary>
    public long NextDeadline => Math.Min(HeldDeadline, TcpDeadline);

    /// <summary>When the first proxy wake-up or connect timeout is due (absolute ms), or long.MaxValue.</summary>
    private long TcpDeadline
    {
        get
        {
            while (_connecting.TryPeek(out TcpProxy? p) && (p.ConnectDeadline == 0 || !p.Connecting))
            {
                _connecting.Dequeue();
            }
            while (_wakes.TryPeek(out TcpProxy? p, out long when) && p.WakeAt != when)
            {
                _wakes.Dequeue();
            }
            long wake = _wakes.TryPeek(out _, out long next) ? next : long.MaxValue;
            return Math.Min(wake, _connecting.TryPeek(out TcpProxy? head) ? head.ConnectDeadline : long.MaxValue);
        }
    }

    /// <summary>
    /// Sends held datagrams that are due; fails connects that took longer than the timeout (the guest gets RST); runs
    /// proxies whose wake-up is due.
    /// </summary>
    public void OnTimer(long now)
    {
        SendHeld(now);
        while (TcpDeadline <= now)
        {
            if (_wakes.TryPeek(out TcpProxy? p, out long when) && when <= now)
            {
                _wakes.Dequeue();
                p.WakeAt = 0;
                p.Run(now);
            }
            else
            {
                _connecting.Dequeue().FinishConnect(false, now, TcpProxy.TimedOut);
            }
        }
    }

    internal static IPAddress ToAddress(uint ip)
    {
        byte[] b = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(b, ip);
        return new IPAddress(b);
    }

    internal static uint FromAddress(IPAddress address)
    {
        Span<byte> b = stackalloc byte[4];
        return address.TryWriteBytes(b, out int n) && n == 4 ? System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b) : 0;
    }

    public void TcpEstablished(TcpSocket c)
    {
        if (c.Tag is TcpProxy p)
        {
            p.Established();
            Queue(p);
        }
    }

    public void TcpReadable(TcpSocket c) => Queue(c.Tag as TcpProxy);

    public void TcpWritable(TcpSocket c) => Queue(c.Tag as TcpProxy);

    /// <summary>Under the engine lock, inside an engine call: run the proxy once the call has returned.</summary>
    internal void Queue(TcpProxy? p)
    {
        if (p is not null && !p.Queued)
        {
            p.Queued = true;
            _runList.Add(p);
        }
    }

    /// <summary>Under the engine lock, after an engine call: moves the bytes of every proxy its callbacks queued.</summary>
    public void RunQueued()
    {
        if (_runList.Count == 0)
        {
            return;
        }
        long now = EngineGate.Now;
        // A proxy's calls into the engine (read, write, shutdown, abort, connect outcome) raise no callbacks, so no
        // run queues another and this ends after one pass; the list is indexed because that stays true only by design.
        for (int i = 0; i < _runList.Count; i++)
        {
            TcpProxy p = _runList[i];
            p.Queued = false;
            p.Run(now);
        }
        _runList.Clear();
    }

    public void TcpReset(TcpSocket c) => (c.Tag as TcpProxy)?.OnReset();

    public FlowVerdict UdpReceived(in UdpFlow flow, ReadOnlySpan<byte> payload)
    {
        foreach (UdpPublisher p in UdpPublishers)
        {
            if (p.TryDeliver(flow, payload))
            {
                return FlowVerdict.Taken;
            }
        }
        if (flow.RemoteIp == _o.GatewayIp)
        {
            if (flow.RemotePort == 53)
            {
                _ = AnswerDnsAsync(flow, payload.ToArray());
            }
            return FlowVerdict.Taken;
        }
        if ((_o.InSubnet(flow.RemoteIp) && flow.RemoteIp != _o.HostIp) || Refused(flow.RemoteIp))
        {
            return FlowVerdict.Taken;
        }
        if (Stops(RuleProto.Udp, IpAddr.V4(flow.RemoteIp), flow.RemotePort, payload.Length, out PolicyRule? rule) is { } stopped)
        {
            return stopped;
        }
        SendOrHold(rule, payload, (Nat: this, Flow: flow, Rule: rule), static (p, s) => s.Nat.Udp.Send(s.Flow, p, s.Rule));
        return FlowVerdict.Taken;
    }

    private async Task AnswerDnsAsync(UdpFlow flow, byte[] query)
    {
        byte[]? answer = await _dns.ResolveAsync(query, client: flow.GuestIp).ConfigureAwait(false);
        if (answer is null)
        {
            return;
        }
        lock (_gate.Sync)
        {
            // Over UDP, a reply too big for the link is cut to the header with TC set so the client retries over TCP.
            if (!_gate.Engine.SendUdp(flow, answer, EngineGate.Now) && DnsForwarder.Truncated(answer) is { } truncated)
            {
                _gate.Engine.SendUdp(flow, truncated, EngineGate.Now);
            }
        }
    }

    public FlowVerdict IcmpEchoRequested(uint guestIp, uint destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload)
    {
        if (Refused(destination))
        {
            return FlowVerdict.Taken;
        }
        if (Stops(RuleProto.Icmp, IpAddr.V4(destination), 0, payload.Length, out PolicyRule? rule) is { } stopped)
        {
            return stopped;
        }
        _inspector?.IcmpEcho(guestIp, destination, payload.Length, reply: false);
        SendOrHold(rule, payload, (Nat: this, Guest: IpAddr.V4(guestIp), To: IpAddr.V4(TranslateOut(destination)), Asked: IpAddr.V4(destination), Id: id, Sequence: sequence),
            static (p, s) => s.Nat.Icmp?.Send(s.Guest, s.To, s.Asked, s.Id, s.Sequence, p));
        return FlowVerdict.Taken;
    }

    /// <summary>NAT66: a guest datagram to the host alias (the host's ::1) or off the link, from the flow's IPv6 host socket.</summary>
    public FlowVerdict Udp6Received(in Udp6Flow flow, ReadOnlySpan<byte> payload)
    {
        UInt128 to = HostAddress6(flow.RemoteIp);
        if (to == 0)
        {
            return FlowVerdict.Taken;
        }
        if (Stops(RuleProto.Udp, IpAddr.V6(flow.RemoteIp), flow.RemotePort, payload.Length, out PolicyRule? rule) is { } stopped)
        {
            return stopped;
        }
        SendOrHold(rule, payload, (Nat: this, Flow: flow, To: to, Rule: rule), static (p, s) => s.Nat.Udp.Send6(s.Flow, s.To, p, s.Rule));
        return FlowVerdict.Taken;
    }

    /// <summary>
    /// NAT66: an echo to the host alias goes to the host's ::1, others to their destination, through the ICMPv6 socket.
    /// Without one, the host alias still answers (the engine's reply, as before NAT66) and other echoes get none.
    /// </summary>
    public FlowVerdict Icmp6EchoRequested(UInt128 guestIp, UInt128 destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload)
    {
        UInt128 to = HostAddress6(destination);
        if (to == 0)
        {
            return FlowVerdict.Taken;
        }
        if (Stops(RuleProto.Icmp, IpAddr.V6(destination), 0, payload.Length, out PolicyRule? rule) is { } stopped)
        {
            return stopped;
        }
        SendOrHold(rule, payload, (Nat: this, Guest: guestIp, To: to, Asked: destination, Id: id, Sequence: sequence),
            static (p, s) => s.Nat.Echo6(s.Guest, s.To, s.Asked, s.Id, s.Sequence, p));
        return FlowVerdict.Taken;
    }

    /// <summary>
    /// An IPv6 echo to the host (its ::1 for the host alias) through the ICMPv6 socket. The host alias's echo falls back
    /// as its TCP and UDP do: when there is no ICMPv6 socket or the host cannot send to its ::1 (no ::1 on its loopback),
    /// it goes to 127.0.0.1 through the ICMP socket and the reply comes back to the guest as ICMPv6 from the host alias;
    /// with neither socket the host alias answers itself.
    /// </summary>
    private void Echo6(UInt128 guestIp, UInt128 to, UInt128 destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload)
    {
        if (Icmp6 is { } icmp && icmp.Send(IpAddr.V6(guestIp), IpAddr.V6(to), IpAddr.V6(destination), id, sequence, payload))
        {
            return;
        }
        if (destination != _o.HostIp6)
        {
            return;
        }
        if (Icmp is { } icmp4 && icmp4.Send(IpAddr.V6(guestIp), IpAddr.V4(Loopback), IpAddr.V6(destination), id, sequence, payload))
        {
            return;
        }
        _gate.Engine.SendIcmp6EchoReply(destination, guestIp, id, sequence, payload, EngineGate.Now);
    }

    /// <summary>Closes every host socket (with RST: the gateway is going away) and the UDP flows.</summary>
    public void Dispose()
    {
        lock (_gate.Sync)
        {
            foreach (TcpProxy p in _proxies.ToArray())
            {
                p.Stop();
            }
        }
        Udp.Dispose();
    }
}
