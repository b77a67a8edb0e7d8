using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Services;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>What the relay does with a guest connection the NAT sent it.</summary>
internal enum RelayKind
{
    /// <summary>The guest asked the gateway's proxy (192.168.65.1:3128) itself.</summary>
    Explicit,
    /// <summary>Guest TCP to port 80, sent on through the upstream HTTP proxy as absolute-URI requests.</summary>
    Http,
    /// <summary>Guest TCP to port 443, tunnelled through the upstream proxy with CONNECT to the SNI or the address.</summary>
    Https,
}

/// <summary>
/// The gateway's HTTP proxy work (docs/vpnkit.md, "Upstream proxies"), on a listener on the host's 127.0.0.1 that the NAT
/// carries chosen guest connections to, as it carries DNS over TCP: the engine and its TCP proxy stay unchanged. The NAT
/// tells the relay, under the engine lock, which of its host sockets (by local port) carries which guest flow; a
/// connection from any other socket (another local user) is closed unread, so nobody else gets the proxy credentials.
/// <list type="bullet">
/// <item>Explicit: request heads are read one at a time; each goes to the upstream proxy with the gateway's
/// <c>Proxy-Authorization</c>, or, with no upstream (or excluded), straight to the origin through the NAT's own rules
/// (the host alias is the host's loopback; refused addresses stay refused). CONNECT is answered 200 and spliced.</item>
/// <item>Transparent port 80: origin-form heads become absolute-URI requests to the upstream (RFC 9112 §3.2.2), Host
/// from the header or the destination address; a Host that --no-proxy names goes direct to the address, unchanged.</item>
/// <item>Transparent port 443: the upstream is connected first (a down proxy resets the guest at once), the ClientHello
/// is read for its SNI (RFC 6066 §3), then CONNECT SNI:443 (or the address); anything but 2xx resets the guest, else the
/// bytes pass unchanged both ways.</item>
/// </list>
/// A connection carries one route: a request for another origin (or a change between direct and proxied) ends it after
/// the answers so far. Heads are bounded (431), bad ones get 400 before anything was forwarded and a close after.
/// </summary>
internal sealed partial class ProxyRelay : IDisposable
{
    public const ushort ExplicitPort = 3128;
    private const int MaxSessions = 1024;
    private const int MaxHead = HttpParser.MaxHeaderBytes;
    private const int MaxChunkLine = 1024;
    private static readonly TimeSpan HeadTimeout = TimeSpan.FromSeconds(60);
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(15);

    private readonly LoopbackAcceptor _acceptor;
    private readonly EngineGate _gate;
    private readonly UpstreamProxyOptions _o;
    private readonly DnsForwarder _dns;
    private readonly LocalNames _names;
    private readonly Func<uint, uint> _hostAddress;
    private readonly uint _hostAlias;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();
    /// <summary>Guest flows the NAT is connecting here, by the NAT socket's local port; under the engine lock.</summary>
    private readonly Dictionary<int, (RelayKind Kind, uint Ip, ushort Port)> _expected = [];

    /// <param name="hostAddress">The NAT's rule: a guest-visible address to the host address to dial, 0 if refused.</param>
    public ProxyRelay(EngineGate gate, UpstreamProxyOptions options, DnsForwarder dns, LocalNames names, uint hostAlias, Func<uint, uint> hostAddress, ILogger log)
    {
        _gate = gate;
        _o = options;
        _dns = dns;
        _names = names;
        _hostAlias = hostAlias;
        _hostAddress = hostAddress;
        _log = log;
        _acceptor = new LoopbackAcceptor(backlog: 128, MaxSessions, ServeAsync, _stop.Token);
    }

    public IPEndPoint EndPoint => _acceptor.EndPoint;

    /// <summary>
    /// Which guest connections come here: the gateway's 3128, and (with an upstream for the port, outside --no-proxy) TCP
    /// to ports 80 and 443 of an address the NAT would dial. The NAT never asks for the host alias, the guest subnet or
    /// loopback: those are always direct.
    /// </summary>
    public RelayKind? Intercepts(bool toGateway, uint ip, ushort port) => toGateway
        ? port == ExplicitPort ? RelayKind.Explicit : null
        : port == 80 && _o.Http is not null && !_o.NoProxy.Matches(ip) ? RelayKind.Http
        : port == 443 && _o.Https is not null && !_o.NoProxy.Matches(ip) ? RelayKind.Https
        : null;

    /// <summary>Under the engine lock: the NAT's socket from <paramref name="localPort"/> carries this guest flow.</summary>
    public void Expect(int localPort, RelayKind kind, uint ip, ushort port)
    {
        if (_expected.Count >= 8192)
        {
            _expected.Clear(); // Only connects that never arrived are left behind; bound them.
        }
        _expected[localPort] = (kind, ip, port);
    }

    private async Task ServeAsync(Socket guest)
    {
        (RelayKind Kind, uint Ip, ushort Port) flow = default;
        bool known;
        // The NAT registers its socket under the engine lock in the same step that started the connect, so holding the
        // lock here means the registration, if any, is done.
        lock (_gate.Sync)
        {
            known = guest.RemoteEndPoint is IPEndPoint peer && _expected.Remove(peer.Port, out flow);
        }
        if (!known)
        {
            Reset(guest);
            return;
        }
        try
        {
            guest.NoDelay = true;
            if (flow.Kind == RelayKind.Https)
            {
                await TunnelTlsAsync(guest, flow.Ip, flow.Port).ConfigureAwait(false);
            }
            else
            {
                await new HttpSession(this, guest, flow.Kind, flow.Ip, flow.Port).RunAsync().ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException or IOException)
        {
            Reset(guest);
        }
    }

    /// <summary>Port 443: upstream first, then the ClientHello's SNI, then CONNECT; the bytes themselves pass unchanged.</summary>
    private async Task TunnelTlsAsync(Socket guest, uint ip, ushort port)
    {
        ProxyServer proxy = _o.Https!;
        using Socket? upstream = await ConnectAsync(proxy).ConfigureAwait(false);
        if (upstream is null)
        {
            Reset(guest);
            return;
        }
        var fromGuest = new SocketReader(guest);
        string? sni = null;
        using (var wait = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
        {
            wait.CancelAfter(HeadTimeout);
            while (TlsClientHello.Parse(fromGuest.Buffered.Span, out sni, out _, out _) == TlsClientHello.Result.NeedMore
                && fromGuest.Buffered.Length < TlsClientHello.MaxHello + 64)
            {
                if (!await fromGuest.FillAsync(wait.Token).ConfigureAwait(false))
                {
                    break;
                }
            }
        }
        if (sni is not null && !DnsRecord.IsDomainName(sni.ToLowerInvariant()))
        {
            sni = null; // Only a host name goes into the CONNECT line.
        }
        if (sni is not null && _o.NoProxy.Matches(sni))
        {
            using Socket? direct = await ConnectDirectAsync(ip, port).ConfigureAwait(false);
            if (direct is null)
            {
                Reset(guest);
                return;
            }
            await SpliceAsync(fromGuest, new SocketReader(direct)).ConfigureAwait(false);
            return;
        }
        string authority = $"{sni ?? Ip4.Format(ip)}:{port}";
        var fromProxy = new SocketReader(upstream);
        int status = await ConnectTunnelAsync(fromProxy, authority, proxy.Authorization).ConfigureAwait(false);
        if (status / 100 != 2)
        {
            LogTunnelRefused(_log, proxy.ToString(), authority, status);
            Reset(guest);
            return;
        }
        await SpliceAsync(fromGuest, fromProxy).ConfigureAwait(false);
    }

    /// <summary>Sends CONNECT (RFC 9110 §9.3.6) and reads the answer's status; 0 when there is no valid answer.</summary>
    private async Task<int> ConnectTunnelAsync(SocketReader fromProxy, string authority, string? authorization)
    {
        string head = $"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
            + (authorization is null ? "" : $"Proxy-Authorization: {authorization}\r\n") + "\r\n";
        using var wait = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        wait.CancelAfter(ConnectTimeout);
        await fromProxy.Socket.SendAsync(Encoding.ASCII.GetBytes(head), SocketFlags.None, wait.Token).ConfigureAwait(false);
        byte[]? answer = await fromProxy.ReadHeadAsync(MaxHead, wait.Token, skipEmptyLines: false).ConfigureAwait(false);
        return answer is not null ? StatusOf(answer) : 0;
    }

    /// <summary>The status code of a status line (RFC 9112 §4), 0 when it is not one.</summary>
    internal static int StatusOf(ReadOnlySpan<byte> head) =>
        head.Length >= 12 && head.StartsWith("HTTP/1."u8) && head[8] == (byte)' ' && char.IsAsciiDigit((char)head[9]) && char.IsAsciiDigit((char)head[10]) && char.IsAsciiDigit((char)head[11])
            ? ((head[9] - '0') * 100) + ((head[10] - '0') * 10) + (head[11] - '0')
            : 0;

    /// <summary>Both ways until both ends finished; what either reader holds goes first. A reset on one side resets the other.</summary>
    private static Task SpliceAsync(SocketReader a, SocketReader b) => Task.WhenAll(PumpAsync(a, b.Socket), PumpAsync(b, a.Socket));

    private static async Task PumpAsync(SocketReader from, Socket to)
    {
        try
        {
            if (from.Buffered.Length > 0)
            {
                await to.SendAsync(from.Buffered, SocketFlags.None).ConfigureAwait(false);
                from.Skip(from.Buffered.Length);
            }
            byte[] buffer = new byte[64 * 1024];
            int n;
            while ((n = await from.Socket.ReceiveAsync(buffer, SocketFlags.None).ConfigureAwait(false)) > 0)
            {
                await to.SendAsync(buffer.AsMemory(0, n), SocketFlags.None).ConfigureAwait(false);
            }
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Reset(from.Socket);
            Reset(to);
        }
    }

    private static void Reset(Socket s) => LoopbackAcceptor.Reset(s);

    private async Task<Socket?> ConnectAsync(ProxyServer proxy)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            wait.CancelAfter(ConnectTimeout);
            // A name is the host's to resolve: the proxy is on the host's network, not the guest's.
            await (IPAddress.TryParse(proxy.Host, out IPAddress? a)
                ? s.ConnectAsync(a, proxy.Port, wait.Token)
                : s.ConnectAsync(proxy.Host, proxy.Port, wait.Token)).ConfigureAwait(false);
            return s;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ArgumentException)
        {
            LogConnectFailed(_log, proxy.ToString(), e.Message);
            s.Dispose();
            return null;
        }
    }

    /// <summary>Dials a guest-visible address as the NAT would (host alias → host loopback); null if refused or failed.</summary>
    private async Task<Socket?> ConnectDirectAsync(uint ip, int port)
    {
        uint host = _hostAddress(ip);
        if (host == 0)
        {
            return null;
        }
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            wait.CancelAfter(ConnectTimeout);
            await s.ConnectAsync(NatHost.ToAddress(host), port, wait.Token).ConfigureAwait(false);
            return s;
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException)
        {
            LogConnectFailed(_log, $"{Ip4.Format(host)}:{port}", e.Message);
            s.Dispose();
            return null;
        }
    }

    /// <summary>A guest-visible IPv4 address for a host name, as the guest's own lookup would give it; 0 if none.</summary>
    private async Task<uint> ResolveAsync(string host)
    {
        if (Ip4.TryParse(host, out uint ip))
        {
            return ip;
        }
        if (host == "localhost")
        {
            return _hostAlias;
        }
        if (!DnsRecord.IsDomainName(host))
        {
            return 0;
        }
        // An A query (RFC 1035 §4.1) through the gateway's own forwarder: local names, records, hosts file, upstreams.
        byte[] query = new byte[DnsMessage.HeaderLength + DnsName.Length(host) + 4];
        BinaryPrimitives.WriteUInt16BigEndian(query, (ushort)Random.Shared.Next(65536));
        query[2] = 0x01; // RD
        query[5] = 1; // QDCOUNT
        int at = DnsMessage.HeaderLength + DnsName.Write(query.AsSpan(DnsMessage.HeaderLength), host);
        query[at + 1] = 1; // QTYPE A
        query[at + 3] = 1; // QCLASS IN
        byte[]? answer = await _dns.ResolveAsync(query, cancel: _stop.Token).ConfigureAwait(false);
        Span<IpAddr> found = stackalloc IpAddr[1];
        return answer is not null && DnsAnswers.ReadAddresses(answer, found, out _) > 0 && found[0].IsV4 ? found[0].Ipv4 : 0;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _acceptor.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "proxy: cannot connect to {Target}: {Reason}")]
    private static partial void LogConnectFailed(ILogger log, string target, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "proxy: {Proxy} answered CONNECT {Authority} with {Status}; guest connection reset")]
    private static partial void LogTunnelRefused(ILogger log, string proxy, string authority, int status);
}
