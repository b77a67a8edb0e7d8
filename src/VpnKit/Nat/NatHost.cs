using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Services;
using Kit.VpnKit.Stack;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// The host side of every guest flow: decides where each goes (the host alias 192.168.65.2 means the host's
/// 127.0.0.1; the gateway's port 53 is the DNS forwarder; anything else is the real destination) and owns the
/// sockets. Engine callbacks arrive under the engine lock and only start work or signal pumps; they never block.
/// </summary>
internal sealed partial class NatHost : IFlowHandler, IDisposable
{
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(15);
    private readonly EngineGate _gate;
    private readonly GatewayOptions _o;
    private readonly DnsForwarder _dns;
    private readonly ILogger _log;
    private readonly object _proxiesGate = new();
    private readonly HashSet<TcpProxy> _proxies = [];

    public NatHost(EngineGate gate, GatewayOptions options, DnsForwarder dns, ILogger log)
    {
        _gate = gate;
        _o = options;
        _dns = dns;
        _log = log;
        Udp = new UdpNat(gate, TranslateOut, TranslateIn, log);
    }

    public UdpNat Udp { get; }

    /// <summary>Published UDP ports: guest replies to them go back to the host client, not through the NAT.</summary>
    public List<UdpPublisher> UdpPublishers { get; } = [];
    public IcmpForwarder? Icmp { get; set; }

    /// <summary>The loopback listener that answers DNS over TCP for the gateway; null until started.</summary>
    public IPEndPoint? DnsTcp { get; set; }

    public int ProxyCount
    {
        get
        {
            lock (_proxiesGate)
            {
                return _proxies.Count;
            }
        }
    }

    private const uint Loopback = 0x7F000001;

    /// <summary>Guest-visible destination → host destination.</summary>
    private uint TranslateOut(uint ip) => ip == _o.HostIp ? Loopback : ip;

    /// <summary>Host-side source → what the guest sees (the host's loopback appears as the host alias).</summary>
    private uint TranslateIn(uint ip) => (ip >> 24) == 127 ? _o.HostIp : ip;

    public void TcpConnectRequested(TcpConnection c)
    {
        EndPoint? target = null;
        if (c.RemoteIp == _o.GatewayIp)
        {
            if (c.RemotePort == 53)
            {
                target = DnsTcp; // DNS over TCP (RFC 7766): answered by the forwarder's TCP listener on loopback.
            }
        }
        else if (!(_o.InSubnet(c.RemoteIp) && c.RemoteIp != _o.HostIp))
        {
            target = new IPEndPoint(ToAddress(TranslateOut(c.RemoteIp)), c.RemotePort);
        }
        if (target is null)
        {
            _gate.Engine.CompleteConnect(c, connected: false, EngineGate.Now);
            return;
        }
        Socket socket = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var proxy = new TcpProxy(_gate, c, socket, _log, Forget);
        lock (_proxiesGate)
        {
            _proxies.Add(proxy);
        }
        _ = proxy.ConnectAsync(target, ConnectTimeout);
    }

    /// <summary>Adopts an accepted host socket for an engine-opened (published port) connection.</summary>
    public void Adopt(TcpConnection c, Socket accepted)
    {
        var proxy = new TcpProxy(_gate, c, accepted, _log, Forget);
        lock (_proxiesGate)
        {
            _proxies.Add(proxy);
        }
    }

    private void Forget(TcpProxy p)
    {
        lock (_proxiesGate)
        {
            _proxies.Remove(p);
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

    public void TcpEstablished(TcpConnection c) => (c.Tag as TcpProxy)?.StartPumps();

    private readonly List<TcpProxy> _wakeups = [];

    public void TcpReadable(TcpConnection c) => Queue(c.Tag as TcpProxy, readable: true);

    public void TcpWritable(TcpConnection c) => Queue(c.Tag as TcpProxy, readable: false);

    /// <summary>Called under the engine lock: remember whom to wake once the lock is released.</summary>
    private void Queue(TcpProxy? p, bool readable)
    {
        if (p is null)
        {
            return;
        }
        if (readable)
        {
            p.WakeReadable = true;
        }
        else
        {
            p.WakeWritable = true;
        }
        if (!p.WakeQueued)
        {
            p.WakeQueued = true;
            _wakeups.Add(p);
        }
    }

    /// <summary>Under the engine lock: moves the pending wake-ups to the caller's list.</summary>
    public void TakeWakeups(List<(TcpProxy Proxy, bool Readable, bool Writable)> into)
    {
        foreach (TcpProxy p in _wakeups)
        {
            into.Add((p, p.WakeReadable, p.WakeWritable));
            p.WakeQueued = p.WakeReadable = p.WakeWritable = false;
        }
        _wakeups.Clear();
    }

    /// <summary>Outside the engine lock: delivers wake-ups; pumps may run inline on this thread until they wait.</summary>
    public static void RunWakeups(List<(TcpProxy Proxy, bool Readable, bool Writable)> list)
    {
        foreach (var (p, r, w) in list)
        {
            p.Wake(r, w);
        }
        list.Clear();
    }

    public void TcpReset(TcpConnection c) => (c.Tag as TcpProxy)?.OnReset();

    public void UdpReceived(in UdpFlow flow, ReadOnlySpan<byte> payload)
    {
        foreach (UdpPublisher p in UdpPublishers)
        {
            if (p.TryDeliver(flow, payload))
            {
                return;
            }
        }
        if (flow.RemoteIp == _o.GatewayIp)
        {
            if (flow.RemotePort == 53)
            {
                _ = AnswerDnsAsync(flow, payload.ToArray());
            }
            return;
        }
        if (_o.InSubnet(flow.RemoteIp) && flow.RemoteIp != _o.HostIp)
        {
            return;
        }
        Udp.Send(flow, payload);
    }

    private async Task AnswerDnsAsync(UdpFlow flow, byte[] query)
    {
        byte[]? answer = await _dns.ResolveAsync(query).ConfigureAwait(false);
        if (answer is null)
        {
            return;
        }
        lock (_gate.Sync)
        {
            // Over UDP, a reply too big for the link is cut to the header with TC set so the client retries over TCP.
            if (!_gate.Engine.SendUdp(flow, answer, EngineGate.Now) && answer.Length > 12)
            {
                byte[] truncated = answer.AsSpan(0, 12).ToArray();
                truncated[2] |= 0x02;
                truncated[4] = truncated[5] = truncated[6] = truncated[7] = truncated[8] = truncated[9] = truncated[10] = truncated[11] = 0;
                _gate.Engine.SendUdp(flow, truncated, EngineGate.Now);
            }
        }
    }

    public void IcmpEchoRequested(uint guestIp, uint destination, ushort id, ushort sequence, ReadOnlySpan<byte> payload)
        => Icmp?.Send(guestIp, TranslateOut(destination), destination, id, sequence, payload);

    public void Dispose() => Udp.Dispose();
}
