using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Kit.Linux;
using Kit.VpnKit.Capture;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Links;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Policy;
using Kit.VpnKit.Services;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit;

/// <summary>
/// A host port forwarded to a guest port (host → guest), as in <c>--publish [HOST:]8080:80[/udp]</c>: the host end listens on
/// a loopback address, 127.0.0.1 unless <see cref="Host"/> says otherwise (<c>[::1]:8080:80</c> for the host's IPv6
/// loopback). The guest end is the first guest's IPv4 address, or for [::1] its IPv6 address once the gateway has
/// learned one (<see cref="Gateway.PublishTarget"/>).
/// </summary>
public readonly record struct PortPublish(int HostPort, int GuestPort, bool Udp)
{
    /// <summary>The loopback address listened on; null: 127.0.0.1.</summary>
    public IPAddress? Host { get; init; }

    public IPAddress HostAddress => Host ?? IPAddress.Loopback;

    /// <summary>The host end as text: 127.0.0.1:8080 or [::1]:8080.</summary>
    public string HostEndPoint => new IPEndPoint(HostAddress, HostPort).ToString();

    public static PortPublish Parse(string text)
    {
        bool udp = false;
        string t = text;
        if (t.EndsWith("/udp", StringComparison.OrdinalIgnoreCase))
        {
            udp = true;
            t = t[..^4];
        }
        else if (t.EndsWith("/tcp", StringComparison.OrdinalIgnoreCase))
        {
            t = t[..^4];
        }
        IPAddress? host = null;
        string? hostText = null;
        if (t.StartsWith('['))
        {
            // An IPv6 host address is bracketed (RFC 3986 §3.2.2), as docker's -p [::1]:8080:80 writes it.
            int close = t.IndexOf("]:", StringComparison.Ordinal);
            if (close < 0)
            {
                throw new FormatException($"--publish wants [HOST]:HOSTPORT:GUESTPORT[/udp], got '{text}'");
            }
            hostText = t[1..close];
            t = t[(close + 2)..];
        }
        else if (t.Split(':') is { Length: 3 } three)
        {
            hostText = three[0];
            t = $"{three[1]}:{three[2]}";
        }
        if (hostText is not null)
        {
            if (!IPAddress.TryParse(hostText, out host) || !IPAddress.IsLoopback(host))
            {
                throw new FormatException($"--publish listens on loopback only (127.0.0.1 or [::1]), got '{text}'");
            }
            host = host.IsIPv4MappedToIPv6 ? host.MapToIPv4() : host;
        }
        string[] p = t.Split(':');
        if (p.Length != 2 || !ushort.TryParse(p[0], NumberStyles.None, CultureInfo.InvariantCulture, out ushort h) || !ushort.TryParse(p[1], NumberStyles.None, CultureInfo.InvariantCulture, out ushort g) || h == 0 || g == 0)
        {
            throw new FormatException($"--publish wants [HOST:]HOSTPORT:GUESTPORT[/udp], got '{text}'");
        }
        return new PortPublish(h, g, udp) { Host = host };
    }
}

/// <summary>What the gateway serves.</summary>
public sealed class VpnKitServerOptions
{
    public int Mtu { get; init; } = 1500;
    /// <summary>DNS upstreams; empty means the nameservers of <see cref="ResolvConfPath"/>, followed as it changes.</summary>
    public IReadOnlyList<IPEndPoint> DnsUpstreams { get; init; } = [];
    /// <summary>The resolv.conf whose nameservers are the upstreams when <see cref="DnsUpstreams"/> is empty.</summary>
    public string ResolvConfPath { get; init; } = "/etc/resolv.conf";
    /// <summary>A hosts file whose names the forwarder answers (followed as it changes); null: none.</summary>
    public string? HostsPath { get; init; } = "/etc/hosts";
    /// <summary>Names the forwarder answers itself (exact, or *.ZONE), before the hosts file and the upstreams.</summary>
    public IReadOnlyList<DnsRecord> DnsRecords { get; init; } = [];
    /// <summary>DHCP's domain search list (option 119) and domain name (option 15, the first); empty: "localdomain".</summary>
    public IReadOnlyList<string> DnsSearch { get; init; } = [];
    public IReadOnlyList<PortPublish> Publishes { get; init; } = [];
    public string? PcapPath { get; init; }
    public IReadOnlyList<string> HostNames { get; init; } = ["host.internal", "host.docker.internal"];
    /// <summary>The families whose TCP the (single) link segments and checksums: see <see cref="TapLink.Open"/>.</summary>
    public TcpOffload SegmentationOffload { get; init; }
    /// <summary>
    /// Refuse guest traffic to the cloud metadata service (169.254.169.254): on a cloud VM it hands out the instance's
    /// credentials to anyone who asks from the host. TCP is answered with RST, UDP and ICMP are dropped, all counted
    /// (docs/security.md, "What the guest can reach").
    /// </summary>
    public bool BlockMetadata { get; init; }
    /// <summary>Connections to the host alias (192.168.65.2) reach the host's 127.0.0.1. Off: the alias reaches nothing.</summary>
    public bool HostLoopback { get; init; } = true;
    /// <summary>IPv6 on the guest link (docs/vpnkit.md, "IPv6"); false: IPv6 frames are dropped and no RA is sent.</summary>
    public bool Ipv6 { get; init; } = true;
    /// <summary>The guest /64 (its first 64 bits count); null: fd00:6b69:7400::/64 (<see cref="GatewayOptions.Ipv6Prefix"/>).</summary>
    public IPAddress? Ipv6Prefix { get; init; }
    /// <summary>Record flows, DNS and HTTP (docs/vpnkit.md, "Inspector"); null: off, and nothing is looked at.</summary>
    public InspectorOptions? Inspect { get; init; }
    /// <summary>The rules new flows are checked against, in order (<c>--policy FILE</c>; docs/vpnkit.md, "Policy").</summary>
    public IReadOnlyList<PolicyRule> PolicyRules { get; init; } = [];
    /// <summary>Upstream HTTP(S) proxies and --no-proxy (docs/vpnkit.md, "Upstream proxies"); null: none (the gateway's
    /// own proxy on 192.168.65.1:3128 then goes direct).</summary>
    public UpstreamProxyOptions? Proxy { get; init; }
}

/// <summary>
/// The VPNKit driver: one pure engine behind one lock, a switch of guest links, the NAT's sockets, the DNS
/// forwarder, and the event loop (<see cref="EventLoop"/>) that reads pollable links (TAP), carries every TCP flow's
/// host socket and runs the engine's timers. A link that can only block (a QEMU or hyperkit socket, the in-process
/// virtio-net) is read on a thread of its own, which then does that frame's host socket work itself.
/// </summary>
public sealed partial class VpnKitServer : IDisposable
{
    private readonly VpnKitServerOptions _options;
    private readonly ILogger _log;
    private readonly EngineGate _gate = new();
    private readonly GatewayOptions _gw;
    private readonly Switch _switch = new();
    private readonly NatHost _nat;
    private readonly PcapWriter? _pcap;
    private readonly CancellationTokenSource _stop = new();
    private readonly List<IDisposable> _owned = [];
    private readonly DnsForwarder _dns;
    private readonly LocalNames _names;
    private readonly EventLoop _loop;
    private readonly PublishedUdp6 _publishedUdp6 = new();

    public VpnKitServer(VpnKitServerOptions options, ILoggerFactory logs)
    {
        if (options.Mtu is < 576 or > 65520)
        {
            throw new ArgumentException($"MTU must be between 576 and 65520, got {options.Mtu}");
        }
        _options = options;
        _log = logs.CreateLogger("vpnkit");
        _gw = new GatewayOptions
        {
            Mtu = options.Mtu,
            IsnSecret = (ulong)Random.Shared.NextInt64(),
            SegmentationOffload = options.SegmentationOffload,
            DomainName = options.DnsSearch.Count > 0 ? options.DnsSearch[0] : "localdomain",
            SearchDomains = options.DnsSearch,
            Ipv6 = options.Ipv6,
            Ipv6Prefix = options.Ipv6Prefix is { } prefix ? Ip6.Parse(prefix.ToString()) & ~(UInt128)ulong.MaxValue : GatewayOptions.DefaultIpv6Prefix,
        };
        // The host names answer AAAA with the host alias's IPv6 address too. glibc's default order (RFC 6724) tries that
        // ULA before IPv4, so it must lead where the IPv4 alias does: NAT66 carries it to the host's ::1, and a TCP
        // connect that ::1 refuses is tried again on 127.0.0.1 (TcpProxy), where most host services listen.
        var names = _names = new LocalNames(IPAddress.Parse(Ip4.Format(_gw.HostIp)), options.HostNames, options.DnsRecords, options.HostsPath, options.HostLoopback,
            options.Ipv6 ? IpAddr.V6(_gw.HostIp6).ToIPAddress() : null);
        // One view of which name gave which address, taught by the forwarder's answers: flows are named from it and the
        // policy's dns rules match through it, with or without the inspector.
        var addressNames = new AddressNames();
        Inspector = options.Inspect is null ? null : new Inspector(options.Inspect, addressNames);
        _dns = new DnsForwarder(options.DnsUpstreams, options.ResolvConfPath, names, _log) { Inspector = Inspector, Names = addressNames };
        var dns = _dns;
        Policy = new PolicyTable(addressNames.Of);
        Policy.ReplaceAll(options.PolicyRules);
        if (Inspector is not null)
        {
            Inspector.Policy = Policy;
        }
        _nat = new NatHost(_gate, _gw, dns, _log) { BlockMetadata = options.BlockMetadata, HostLoopback = options.HostLoopback, Inspector = Inspector, Policy = Policy };
        _gate.Engine = new Gateway(_gw, _switch, _nat) { Dns = new Dns6Relay(_gate, dns), PublishedUdp6 = _publishedUdp6 };
        _loop = new EventLoop(_gate, _nat, _switch, _gw.GatewayMac, LinkClosed);
        _nat.Loop = _loop;
        _gate.Nat = _nat;
        if (options.PcapPath is not null)
        {
            // 0600 and O_NOFOLLOW: the capture holds all of the guest's traffic (docs/security.md, "Packet capture").
            _pcap = new PcapWriter(new FileStream(PrivateFile.CreateForWrite(options.PcapPath), FileAccess.Write, 1 << 16));
            _switch.Tap = _pcap.Write;
        }
        // Live captures come with the inspector, whose API starts and stops them (docs/vpnkit.md, "pcap of one flow").
        if (Inspector is not null)
        {
            LiveCaptures live = Captures = new LiveCaptures();
            live.Watch(Policy);
            _nat.Captures = live;
            PcapWriter? file = _pcap;
            _switch.Tap = file is null ? live.Offer : frame =>
            {
                file.Write(frame);
                live.Offer(frame);
            };
        }
    }

    /// <summary>Captures of chosen flows, started and stopped at run time; there when the inspector is.</summary>
    public LiveCaptures? Captures { get; }

    /// <summary>What the gateway has seen (flows, DNS, HTTP), when <see cref="VpnKitServerOptions.Inspect"/> asked for it.</summary>
    public Inspector? Inspector { get; }

    /// <summary>The rules (<c>--policy</c>; changed at run time through <c>/api/rules</c>), checked for every new flow.</summary>
    public PolicyTable Policy { get; }

    /// <summary>Guest packets refused by --block-metadata or --no-host-loopback.</summary>
    public long PolicyBlocked => _nat.Blocked;

    /// <summary>How remote pings are forwarded, or why they are not.</summary>
    public string IcmpMode { get; private set; } = "not started";

    public int Mtu => _gw.Mtu;

    /// <summary>Starts the timer and the published ports.</summary>
    public void Start()
    {
        IcmpForwarder? icmp = IcmpForwarder.TryCreate(_gate, _log);
        if (icmp is not null)
        {
            icmp.Inspector = Inspector;
        }
        _nat.Icmp = icmp;
        IcmpMode = icmp?.Mode ?? "unavailable";
        if (icmp is not null)
        {
            _owned.Add(icmp);
        }
        if (_gw.Ipv6 && IcmpForwarder.TryCreate(_gate, _log, ipv6: true) is { } icmp6)
        {
            _nat.Icmp6 = icmp6;
            _owned.Add(icmp6);
        }
        var dnsTcp = new DnsTcpServer(_dns, _log);
        _owned.Add(dnsTcp);
        _nat.DnsTcp = dnsTcp.EndPoint;
        var relay = new ProxyRelay(_gate, _options.Proxy ?? new UpstreamProxyOptions(), _dns, _names, _gw.HostIp, _nat.HostAddressFor, _log);
        _owned.Add(relay);
        _nat.Relay = relay;
        foreach (PortPublish p in _options.Publishes)
        {
            if (AddPublish(p) is string error)
            {
                throw new IOException(error);
            }
        }
        _gate.Loop = _loop;
        _loop.Start();
    }

    /// <summary>Attaches a guest link: read by the event loop if it can be polled, else on a thread of its own.</summary>
    public void AddLink(ILink link)
    {
        _switch.Add(link);
        if (link is IPollableLink pollable)
        {
            _loop.AddLink(pollable);
        }
        else
        {
            var t = new Thread(() => ReadLoop(link)) { IsBackground = true, Name = $"vpnkit-link {link.Name}" };
            t.Start();
        }
        LogLinkUp(_log, link.Name);
    }

    private void LinkClosed(ILink link)
    {
        _switch.Remove(link);
        link.Dispose();
        LogLinkDown(_log, link.Name);
    }

    private void ReadLoop(ILink link)
    {
        byte[] buffer = new byte[70_000];
        Gateway engine = _gate.Engine;
        int linkId = _switch.IdOf(link);
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                int n = link.Receive(buffer);
                if (n <= 0)
                {
                    break;
                }
                ReadOnlySpan<byte> frame = buffer.AsSpan(0, n);
                if (_switch.FromLink(link, frame, _gw.GatewayMac))
                {
                    lock (_gate.Sync)
                    {
                        engine.Receive(frame, EngineGate.Now, link.LastFrameTrusted, linkId);
                        _gate.Settle();
                    }
                }
            }
        }
        finally
        {
            LinkClosed(link);
        }
    }

    /// <summary>Accepts QEMU <c>-netdev stream</c> connections (4-byte big-endian framing) on a Unix socket.</summary>
    public void ListenQemu(string path) => ListenUnixStream(path, s => new StreamLink(s, $"qemu:{path}", _gw.Mtu, qemuFraming: true));

    /// <summary>Accepts hyperkit virtio-vpnkit connections (VMN3T handshake, 2-byte little-endian framing).</summary>
    public void ListenVmnet(string path) => ListenUnixStream(path, s => Vmn3t.Accept(s, $"vmnet:{path}", _gw.Mtu, ClaimAddress));

    /// <summary>A VMN3T Preferred_ipv4: reserve the lease in the engine, under the lock every engine call takes.</summary>
    private string? ClaimAddress(ReadOnlySpan<byte> mac, uint address)
    {
        LeaseReservation result;
        lock (_gate.Sync)
        {
            result = _gate.Engine.ReserveLease(MacAddress.Read(mac), address);
        }
        string? refusal = Vmn3t.RefusalReason(result, address);
        if (refusal is not null)
        {
            LogAddressRefused(_log, refusal);
        }
        return refusal;
    }

    /// <summary>Serves QEMU <c>-netdev dgram</c>: one frame per datagram on a Unix datagram socket.</summary>
    public void ListenDgram(string path)
    {
        Socket s = UnixSocketFile.Bind(path, SocketType.Dgram, out UnixSocketFile.Binding binding);
        _owned.Add(binding);
        AddLink(new DgramLink(s, $"dgram:{path}", _gw.Mtu));
    }

    private void ListenUnixStream(string path, Func<Socket, ILink?> accept)
    {
        Socket listener = UnixSocketFile.Bind(path, SocketType.Stream, out UnixSocketFile.Binding binding);
        _owned.Add(listener);
        _owned.Add(binding);
        listener.Listen(16);
        var t = new Thread(() =>
        {
            try
            {
                while (!_stop.IsCancellationRequested)
                {
                    Socket s = listener.Accept();
                    // The handshake may block on a slow peer; do it off the accept thread.
                    _ = Task.Run(() =>
                    {
                        ILink? link = accept(s);
                        if (link is not null)
                        {
                            AddLink(link);
                        }
                    });
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        })
        { IsBackground = true, Name = $"vpnkit-accept {path}" };
        t.Start();
    }

    private readonly object _publishGate = new();
    private readonly Dictionary<(bool Udp, IPAddress Host, int HostPort), (PortPublish Spec, Socket Socket, UdpPublisher? Udp)> _publishes = [];

    /// <summary>The forwards in place now.</summary>
    public IReadOnlyList<PortPublish> Publishes
    {
        get
        {
            lock (_publishGate)
            {
                var list = new List<PortPublish>();
                foreach (var v in _publishes.Values)
                {
                    list.Add(v.Spec);
                }
                list.Sort((a, b) => a.HostPort.CompareTo(b.HostPort));
                return list;
            }
        }
    }

    /// <summary>Starts forwarding the host's loopback HostPort to the first guest; returns an error message or null.</summary>
    public string? AddPublish(PortPublish p)
    {
        lock (_publishGate)
        {
            if (_publishes.ContainsKey((p.Udp, p.HostAddress, p.HostPort)))
            {
                return $"{(p.Udp ? "udp" : "tcp")} {p.HostEndPoint} is already published";
            }
            AddressFamily family = p.HostAddress.AddressFamily;
            Socket s = p.Udp
                ? new Socket(family, SocketType.Dgram, ProtocolType.Udp)
                : new Socket(family, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                if (!p.Udp)
                {
                    // SO_REUSEADDR only (not .NET's ReuseAddress, which adds SO_REUSEPORT): a busy port fails to bind.
                    ReuseAddress.Enable(s);
                }
                s.Bind(new IPEndPoint(p.HostAddress, p.HostPort));
                if (!p.Udp)
                {
                    s.Listen(128);
                }
            }
            catch (SocketException e)
            {
                s.Dispose();
                return ReuseAddress.IsAddressInUse(e)
                    ? $"cannot publish {p.HostEndPoint}: address in use (another process listens there)"
                    : $"cannot bind {p.HostEndPoint}: {e.Message}";
            }
            UdpPublisher? udp = null;
            if (p.Udp)
            {
                bool ipv6 = family == AddressFamily.InterNetworkV6;
                udp = new UdpPublisher(_gate, s, (ushort)p.GuestPort, ipv6, _gw.FirstGuestIp, _gw.HostIp, _gw.HostIp6);
                lock (_gate.Sync)
                {
                    _nat.UdpPublishers.Add(udp);
                    if (ipv6)
                    {
                        _publishedUdp6.Publishers.Add(udp);
                    }
                }
                _ = udp.RunAsync();
            }
            else
            {
                _ = AcceptLoopAsync(s, p);
            }
            _publishes[(p.Udp, p.HostAddress, p.HostPort)] = (p, s, udp);
            return null;
        }
    }

    /// <summary>Stops a forward (on 127.0.0.1 unless <paramref name="host"/> says); false if there was none. Connections
    /// already made keep running.</summary>
    public bool RemovePublish(bool udp, int hostPort, IPAddress? host = null)
    {
        lock (_publishGate)
        {
            if (!_publishes.Remove((udp, host ?? IPAddress.Loopback, hostPort), out var v))
            {
                return false;
            }
            if (v.Udp is not null)
            {
                lock (_gate.Sync)
                {
                    _nat.UdpPublishers.Remove(v.Udp);
                    _publishedUdp6.Publishers.Remove(v.Udp);
                }
            }
            v.Socket.Dispose();
            return true;
        }
    }

    private async Task AcceptLoopAsync(Socket listener, PortPublish p)
    {
        try
        {
            while (true)
            {
                Socket s = await listener.AcceptAsync().ConfigureAwait(false);
                lock (_gate.Sync)
                {
                    // [::1] publishes open to the guest's IPv6 address once known, 127.0.0.1 ones to its IPv4 address.
                    (IpAddr guest, IpAddr source) = _gate.Engine.PublishTarget(preferIpv6: p.HostAddress.AddressFamily == AddressFamily.InterNetworkV6);
                    TcpSocket? c = _gate.Engine.OpenToGuest(guest, (ushort)p.GuestPort, source, EngineGate.Now);
                    if (c is null)
                    {
                        s.Dispose();
                        continue;
                    }
                    // A guest service may listen on IPv4 only (0.0.0.0): refused on IPv6, the connection is made again
                    // to the guest's IPv4 address, so a [::1] publish reaches whatever a 127.0.0.1 one would.
                    _nat.Adopt(c, s, guest.IsV4 ? null : now => _gate.Engine.OpenToGuest(IpAddr.V4(_gw.FirstGuestIp), (ushort)p.GuestPort, IpAddr.V4(_gw.HostIp), now));
                    _gate.Settle();
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        lock (_publishGate)
        {
            foreach (var v in _publishes.Values)
            {
                v.Socket.Dispose();
            }
            _publishes.Clear();
        }
        _loop.Dispose();
        foreach (IDisposable d in _owned)
        {
            d.Dispose();
        }
        _nat.Dispose();
        _pcap?.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "link {Name} up")]
    private static partial void LogLinkUp(ILogger log, string name);

    [LoggerMessage(Level = LogLevel.Warning, Message = "vmnet client refused: {Reason}")]
    private static partial void LogAddressRefused(ILogger log, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "link {Name} down")]
    private static partial void LogLinkDown(ILogger log, string name);
}
