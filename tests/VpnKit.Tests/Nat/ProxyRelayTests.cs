using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Services;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>
/// The proxy relay on its own, with real loopback sockets: a connection it was told of (as the NAT tells it) is served,
/// any other is reset unread; the explicit proxy with no upstream sends pipelined requests, a chunked body with its
/// trailer and a Content-Length body to the origin byte for byte, in origin form and without the guest's
/// Proxy-Authorization.
/// </summary>
public sealed class ProxyRelayTests
{
    private static readonly uint HostAlias = Ip4.Parse("192.168.65.2");

    private static (ProxyRelay Relay, EngineGate Gate) Start()
    {
        var names = new LocalNames(IPAddress.Parse("192.168.65.2"), ["host.internal"], [], null, hostLoopback: true);
        var dns = new DnsForwarder([new IPEndPoint(IPAddress.Loopback, 9)], null, names, NullLogger.Instance);
        var gate = new EngineGate();
        // As the NAT: the host alias is the host's loopback; nothing else is dialled in this test.
        var relay = new ProxyRelay(gate, new UpstreamProxyOptions(), dns, names, HostAlias, ip => ip == HostAlias ? 0x7F000001u : 0, NullLogger.Instance);
        return (relay, gate);
    }

    private static Socket ConnectAs(ProxyRelay relay, EngineGate gate, RelayKind kind, bool register = true)
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        s.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        if (register)
        {
            lock (gate.Sync)
            {
                relay.Expect(((IPEndPoint)s.LocalEndPoint!).Port, kind, Ip4.Parse("192.168.65.1"), ProxyRelay.ExplicitPort);
            }
        }
        s.Connect(relay.EndPoint);
        return s;
    }

    private static async Task<byte[]> ReadToEndAsync(Socket s)
    {
        var all = new MemoryStream();
        byte[] buffer = new byte[65536];
        try
        {
            int n;
            while ((n = await s.ReceiveAsync(buffer, SocketFlags.None, TestContext.Current.CancellationToken)) > 0)
            {
                all.Write(buffer, 0, n);
            }
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
            all.Write("<reset>"u8);
        }
        return all.ToArray();
    }

    [Fact]
    public async Task AConnectionTheNatDidNotAnnounceIsResetUnread()
    {
        (ProxyRelay relay, EngineGate gate) = Start();
        using (relay)
        {
            using Socket stranger = ConnectAs(relay, gate, RelayKind.Explicit, register: false);
            // The reset may come before the request is even sent.
            SocketException e = await Assert.ThrowsAsync<SocketException>(async () =>
            {
                await stranger.SendAsync("GET http://host.internal:1/ HTTP/1.1\r\n\r\n"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
                await stranger.ReceiveAsync(new byte[16], SocketFlags.None, TestContext.Current.CancellationToken);
            });
            Assert.Equal(SocketError.ConnectionReset, e.SocketErrorCode);
        }
    }

    [Fact]
    public async Task ExplicitRequestsReachTheOriginByteForByteInOriginForm()
    {
        (ProxyRelay relay, EngineGate gate) = Start();
        using var origin = new TcpListener(IPAddress.Loopback, 0);
        origin.Start();
        int port = ((IPEndPoint)origin.LocalEndpoint).Port;
        using (relay)
        {
            using Socket guest = ConnectAs(relay, gate, RelayKind.Explicit);
            string url = $"http://host.internal:{port}";
            string sent = $"POST {url}/chunked HTTP/1.1\r\nHost: host.internal\r\nProxy-Authorization: Basic guest\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
                + $"PUT {url}/sized HTTP/1.1\r\nHost: host.internal\r\nContent-Length: 4\r\n\r\nGET "
                + $"GET {url}/last HTTP/1.1\r\nHost: host.internal\r\n\r\n";
            await guest.SendAsync(Encoding.ASCII.GetBytes(sent), SocketFlags.None, TestContext.Current.CancellationToken);
            guest.Shutdown(SocketShutdown.Send);

            using Socket server = await origin.AcceptSocketAsync(TestContext.Current.CancellationToken);
            byte[] got = await ReadToEndAsync(server);
            string expected = "POST /chunked HTTP/1.1\r\nHost: host.internal\r\nTransfer-Encoding: chunked\r\n\r\n"
                + "5;ext=1\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n"
                + "PUT /sized HTTP/1.1\r\nHost: host.internal\r\nContent-Length: 4\r\n\r\nGET "
                + "GET /last HTTP/1.1\r\nHost: host.internal\r\n\r\n";
            Assert.Equal(expected, Encoding.ASCII.GetString(got));
            // The origin's answer comes back unchanged, and the connection ends after it.
            await server.SendAsync("HTTP/1.1 204 No Content\r\n\r\n"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
            server.Shutdown(SocketShutdown.Send);
            Assert.Equal("HTTP/1.1 204 No Content\r\n\r\n", Encoding.ASCII.GetString(await ReadToEndAsync(guest)));
        }
    }

    [Theory]
    [InlineData("GET http://host.internal:1/ HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", "HTTP/1.1 400 ", "obsolete line folding")]
    [InlineData("GET /relative HTTP/1.1\r\n\r\n", "HTTP/1.1 400 ", "absolute http:// URI")]
    [InlineData("GET http://10.1.2.3/ HTTP/1.1\r\n\r\n", "HTTP/1.1 502 ", "cannot connect")]
    public async Task BadRequestsGetTheGatewaysOwnAnswer(string request, string status, string reason)
    {
        (ProxyRelay relay, EngineGate gate) = Start();
        using (relay)
        {
            using Socket guest = ConnectAs(relay, gate, RelayKind.Explicit);
            await guest.SendAsync(Encoding.ASCII.GetBytes(request), SocketFlags.None, TestContext.Current.CancellationToken);
            guest.Shutdown(SocketShutdown.Send);
            string answer = Encoding.ASCII.GetString(await ReadToEndAsync(guest));
            Assert.StartsWith(status, answer, StringComparison.Ordinal);
            Assert.Contains(reason, answer, StringComparison.Ordinal);
        }
    }
}
