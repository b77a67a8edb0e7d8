using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Nat;

internal sealed partial class ProxyRelay
{
    /// <summary>
    /// Where one request goes: through <see cref="Proxy"/> (then <see cref="Target"/> is the absolute URI or the CONNECT
    /// authority) or straight to <see cref="Ip"/>:<see cref="Port"/> (a guest-visible address); or an error status.
    /// </summary>
    private readonly record struct Route(string Key, ProxyServer? Proxy, uint Ip, int Port, string Target, int Status = 0, string? Message = null)
    {
        public static Route Error(int status, string message) => new("", null, 0, 0, "", status, message);
    }

    /// <summary>Decides a request's route (see the class comment): transparent flows by --no-proxy on the Host only.</summary>
    private async Task<Route> RouteAsync(RelayKind kind, uint ip, ushort port, HttpRequestHead req)
    {
        string host;
        int p;
        string path;
        if (req.IsConnect)
        {
            path = "";
            if (!HttpRequestHead.TrySplitAuthority(req.Target, 443, out host, out p))
            {
                return Route.Error(400, "CONNECT wants host:port (RFC 9110 §9.3.6)");
            }
        }
        else if (!req.TryGetAbsolute(out host, out p, out path))
        {
            if (kind == RelayKind.Explicit || !req.Target.StartsWith('/'))
            {
                return Route.Error(400, "a proxy request needs an absolute http:// URI (RFC 9112 §3.2.2)");
            }
            path = req.Target;
            if (req.Host is null)
            {
                (host, p) = (Ip4.Format(ip), port);
            }
            else if (!HttpRequestHead.TrySplitAuthority(req.Host, port, out host, out p))
            {
                return Route.Error(400, "invalid Host");
            }
        }
        if (kind != RelayKind.Explicit)
        {
            // Transparent: "direct" is the address the guest dialled, and the request goes there unchanged.
            return _o.NoProxy.Matches(host) ? new Route($"direct {Ip4.Format(ip)}:{port}", null, ip, port, req.Target) : Proxied(_o.Http!, host, p, path, req.IsConnect);
        }
        ProxyServer? proxy = req.IsConnect ? _o.Https ?? _o.Http : _o.Http;
        bool alias = IsHostAlias(host);
        // The host alias means the host's loopback: an upstream proxy reaches it only when it runs on that same host.
        if (proxy is not null && !_o.NoProxy.Matches(host) && (!alias || proxy.OnLoopback))
        {
            return Proxied(proxy, alias ? "127.0.0.1" : host, p, path, req.IsConnect);
        }
        uint target = alias ? _hostAlias : await ResolveAsync(host).ConfigureAwait(false);
        return target == 0
            ? Route.Error(502, $"cannot resolve {host}")
            : new Route($"direct {Ip4.Format(target)}:{p}", null, target, p, req.IsConnect ? "" : path);
    }

    private static Route Proxied(ProxyServer proxy, string host, int port, string path, bool connect)
    {
        string authority = port == 80 && !connect ? host : $"{host}:{port.ToString(CultureInfo.InvariantCulture)}";
        return new Route($"proxy {proxy}", proxy, 0, 0, connect ? authority : "http://" + authority + path);
    }

    /// <summary>localhost, 127/8, the host alias, or a name the gateway answers with the host alias (host.internal).</summary>
    private bool IsHostAlias(string host)
    {
        if (host == "localhost")
        {
            return true;
        }
        if (Ip4.TryParse(host, out uint ip))
        {
            return ip == _hostAlias || (ip >> 24) == 127;
        }
        // Its IPv4 answers are all the host alias (the relay carries IPv4 only: the alias's IPv6 address beside it does not count).
        IPAddress alias = NatHost.ToAddress(_hostAlias);
        return _names.TryFind(host, out IPAddress[] addresses)
            && Array.Exists(addresses, a => a.Equals(alias))
            && Array.TrueForAll(addresses, a => a.Equals(alias) || a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6);
    }

    /// <summary>One guest connection to the explicit proxy or transparent port 80: request heads one at a time, each on its route.</summary>
    private sealed class HttpSession(ProxyRelay relay, Socket guest, RelayKind kind, uint ip, ushort port)
    {
        private readonly SocketReader _in = new(guest);
        private SocketReader? _out;
        private string? _key;
        private Task? _responses;
        private bool _forwarded;

        public async Task RunAsync()
        {
            if (kind == RelayKind.Http)
            {
                // Transparent: the upstream first, so a proxy that is down resets the guest at once.
                Socket? proxy = await relay.ConnectAsync(relay._o.Http!).ConfigureAwait(false);
                if (proxy is null)
                {
                    Reset(guest);
                    return;
                }
                (_out, _key) = (new SocketReader(proxy), $"proxy {relay._o.Http}");
            }
            try
            {
                await RequestsAsync().ConfigureAwait(false);
            }
            finally
            {
                if (_out is not null)
                {
                    if (_responses is not null)
                    {
                        // The answers so far still reach the guest; then both ends close.
                        try
                        {
                            _out.Socket.Shutdown(SocketShutdown.Send);
                        }
                        catch (Exception e) when (e is SocketException or ObjectDisposedException)
                        {
                        }
                        await _responses.ConfigureAwait(false);
                    }
                    _out.Socket.Dispose();
                }
            }
        }

        private async Task RequestsAsync()
        {
            while (true)
            {
                byte[]? head;
                using (var wait = CancellationTokenSource.CreateLinkedTokenSource(relay._stop.Token))
                {
                    wait.CancelAfter(HeadTimeout);
                    head = await _in.ReadHeadAsync(MaxHead, wait.Token).ConfigureAwait(false);
                }
                if (head is null)
                {
                    if (_in.Oversized)
                    {
                        await RefuseAsync(431, "Request Header Fields Too Large", $"request head over {MaxHead} bytes (RFC 6585 §5)").ConfigureAwait(false);
                    }
                    return;
                }
                if (!HttpRequestHead.TryParse(head, out HttpRequestHead req, out string reason))
                {
                    await RefuseAsync(400, "Bad Request", reason).ConfigureAwait(false);
                    return;
                }
                Route route = await relay.RouteAsync(kind, ip, port, req).ConfigureAwait(false);
                if (route.Status != 0)
                {
                    await RefuseAsync(route.Status, route.Status == 400 ? "Bad Request" : "Bad Gateway", route.Message!).ConfigureAwait(false);
                    return;
                }
                if (route.Key != _key && (_forwarded || !await OpenAsync(route).ConfigureAwait(false)))
                {
                    return; // Another route on a connection already used: end it after the answers so far.
                }
                if (!await ForwardAsync(req, route).ConfigureAwait(false))
                {
                    return;
                }
            }
        }

        /// <summary>Connects this connection's one route (replacing an unused one); false when that failed (answered).</summary>
        private async Task<bool> OpenAsync(Route route)
        {
            _out?.Socket.Dispose();
            _out = null;
            Socket? s = route.Proxy is not null ? await relay.ConnectAsync(route.Proxy).ConfigureAwait(false) : await relay.ConnectDirectAsync(route.Ip, route.Port).ConfigureAwait(false);
            if (s is null)
            {
                if (kind == RelayKind.Explicit)
                {
                    await RefuseAsync(502, "Bad Gateway", route.Proxy is not null ? $"cannot connect to the upstream proxy {route.Proxy}" : "cannot connect").ConfigureAwait(false);
                }
                else
                {
                    Reset(guest);
                }
                return false;
            }
            (_out, _key) = (new SocketReader(s), route.Key);
            return true;
        }

        /// <summary>Sends one request on (head rewritten, body as framed); false when the connection is done.</summary>
        private async Task<bool> ForwardAsync(HttpRequestHead req, Route route)
        {
            Socket to = _out!.Socket;
            if (req.IsConnect && route.Proxy is null)
            {
                // The gateway is the proxy: it answers the tunnel itself (RFC 9110 §9.3.6), then carries bytes.
                await guest.SendAsync("HTTP/1.1 200 Connection established\r\n\r\n"u8.ToArray(), SocketFlags.None).ConfigureAwait(false);
                _forwarded = true;
                await SpliceAsync(_in, _out).ConfigureAwait(false);
                return false;
            }
            byte[] head = req.Write(route.Target, route.Proxy?.Authorization, toOrigin: route.Proxy is null, hostIfAbsent: $"{Ip4.Format(ip)}:{port}");
            await to.SendAsync(head, SocketFlags.None).ConfigureAwait(false);
            _forwarded = true;
            _responses ??= PumpAsync(_out, guest);
            if (req.IsConnect)
            {
                await PumpAsync(_in, to).ConfigureAwait(false);
                return false;
            }
            return await CopyBodyAsync(req, to).ConfigureAwait(false);
        }

        /// <summary>The request body by its framing (RFC 9112 §6.3, §7.1), passed on unchanged.</summary>
        private async Task<bool> CopyBodyAsync(HttpRequestHead req, Socket to)
        {
            if (!req.Chunked)
            {
                return req.ContentLength <= 0 || await _in.CopyAsync(to, req.ContentLength, relay._stop.Token).ConfigureAwait(false);
            }
            while (true)
            {
                byte[]? line = await _in.ReadLineAsync(MaxChunkLine, relay._stop.Token).ConfigureAwait(false);
                if (line is null || !TryChunkSize(line, out long size))
                {
                    return false;
                }
                await to.SendAsync(line, SocketFlags.None).ConfigureAwait(false);
                if (size == 0)
                {
                    break;
                }
                // chunk-data CRLF: anything else after the data is a framing error, and the connection ends.
                if (!await _in.CopyAsync(to, size, relay._stop.Token).ConfigureAwait(false))
                {
                    return false;
                }
                byte[]? crlf = await _in.ReadLineAsync(2, relay._stop.Token).ConfigureAwait(false);
                if (crlf is not ([(byte)'\n'] or [(byte)'\r', (byte)'\n']))
                {
                    return false;
                }
                await to.SendAsync(crlf, SocketFlags.None).ConfigureAwait(false);
            }
            // The trailer section and its empty line (§7.1.2), bounded as a head.
            for (int total = 0; total < MaxHead;)
            {
                byte[]? line = await _in.ReadLineAsync(MaxHead - total, relay._stop.Token).ConfigureAwait(false);
                if (line is null)
                {
                    return false;
                }
                await to.SendAsync(line, SocketFlags.None).ConfigureAwait(false);
                total += line.Length;
                if (line.Length <= 2 && line[0] is (byte)'\r' or (byte)'\n')
                {
                    return true;
                }
            }
            return false;
        }

        /// <summary>chunk-size [ chunk-ext ] CRLF (RFC 9112 §7.1).</summary>
        private static bool TryChunkSize(byte[] line, out long size)
        {
            string text = Encoding.Latin1.GetString(line).TrimEnd('\r', '\n');
            int semi = text.IndexOf(';', StringComparison.Ordinal);
            string hex = (semi < 0 ? text : text[..semi]).Trim(' ', '\t');
            return long.TryParse(hex, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out size) && hex.Length <= 12 && size >= 0;
        }

        /// <summary>The gateway's own answer, only while nothing was forwarded on this connection (else it just ends).</summary>
        private async Task RefuseAsync(int status, string reasonPhrase, string message)
        {
            if (_forwarded)
            {
                return;
            }
            byte[] body = Encoding.UTF8.GetBytes($"kit gateway: {message}\n");
            string head = $"HTTP/1.1 {status.ToString(CultureInfo.InvariantCulture)} {reasonPhrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body.Length.ToString(CultureInfo.InvariantCulture)}\r\nConnection: close\r\n\r\n";
            await guest.SendAsync(Encoding.ASCII.GetBytes(head), SocketFlags.None).ConfigureAwait(false);
            await guest.SendAsync(body, SocketFlags.None).ConfigureAwait(false);
            guest.Shutdown(SocketShutdown.Send);
            _forwarded = true;
            // Read on (bounded) before closing, so the close is a FIN after the answer rather than a reset that could
            // overtake it while the guest is still sending the rest of a huge head.
            using var wait = CancellationTokenSource.CreateLinkedTokenSource(relay._stop.Token);
            wait.CancelAfter(TimeSpan.FromSeconds(10));
            try
            {
                // What is held goes first: a head read that stopped at its bound may have left the buffer full.
                for (int drained = 0; drained < 4 << 20;)
                {
                    drained += _in.Buffered.Length;
                    _in.Skip(_in.Buffered.Length);
                    if (!await _in.FillAsync(wait.Token).ConfigureAwait(false))
                    {
                        break;
                    }
                }
            }
            catch (OperationCanceledException)
            {
            }
        }
    }
}
