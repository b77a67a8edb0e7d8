using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.VpnKit.Services;
using Kit.Testing;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Links;

/// <summary>The port-forward control API, spoken to by .NET's own HTTP client over the Unix socket.</summary>
public sealed class ControlApiTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-api-").FullName;
    private readonly VpnKitServer _server = new(new VpnKitServerOptions { DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)] }, NullLoggerFactory.Instance);
    private readonly ControlApi _api;
    private readonly HttpClient _http;

    public ControlApiTests()
    {
        _server.Start();
        string path = Path.Combine(_dir, "api.sock");
        _api = new ControlApi(_server, path);
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, ct) =>
            {
                var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                await s.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
                return new NetworkStream(s, ownsSocket: true);
            },
        };
        _http = new HttpClient(handler) { BaseAddress = new Uri("http://kit") };
    }

    public void Dispose()
    {
        _http.Dispose();
        _api.Dispose();
        _server.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    [Fact]
    public async Task AddListAndRemoveForwards()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        int port = LoopbackPort.Free();
        string body = $"{{\"proto\":\"tcp\",\"hostPort\":{port},\"guestPort\":80}}";
        HttpResponseMessage add = await _http.PostAsync("/forwards", new StringContent(body, Encoding.UTF8, "application/json"), ct);
        Assert.Equal(HttpStatusCode.Created, add.StatusCode);
        // The host port now listens.
        using (var c = new TcpClient())
        {
            await c.ConnectAsync(IPAddress.Loopback, port, ct);
        }
        string list = await _http.GetStringAsync("/forwards", ct);
        Assert.Equal($"[{{\"proto\":\"tcp\",\"hostPort\":{port},\"guestPort\":80}}]", list);
        HttpResponseMessage again = await _http.PostAsync("/forwards", new StringContent(body, Encoding.UTF8, "application/json"), ct);
        Assert.Equal(HttpStatusCode.Conflict, again.StatusCode);
        Assert.Contains("already published", await again.Content.ReadAsStringAsync(ct));
        Assert.Equal(HttpStatusCode.NoContent, (await _http.DeleteAsync($"/forwards/tcp/{port}", ct)).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await _http.DeleteAsync($"/forwards/tcp/{port}", ct)).StatusCode);
        Assert.Equal("[]", await _http.GetStringAsync("/forwards", ct));
        using var refused = new TcpClient();
        await Assert.ThrowsAsync<SocketException>(async () => await refused.ConnectAsync(IPAddress.Loopback, port, ct));
    }

    [Fact]
    public async Task BadRequestsGetAMessage()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        HttpResponseMessage r = await _http.PostAsync("/forwards", new StringContent("{\"hostPort\":\"x\"}", Encoding.UTF8, "application/json"), ct);
        Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
        Assert.Contains("\"message\"", await r.Content.ReadAsStringAsync(ct));
        Assert.Equal(HttpStatusCode.NotFound, (await _http.GetAsync("/nothing", ct)).StatusCode);
    }
}
