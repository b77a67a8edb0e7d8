using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.Cli.Net;
using Kit.Testing;
using Kit.VpnKit;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.Tests;

/// <summary>The port-forward control API on Kestrel, spoken to by .NET's own HTTP client over its Unix socket.</summary>
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
        Assert.Equal(HttpStatusCode.MethodNotAllowed, (await _http.PutAsync("/forwards", new StringContent("{}"), ct)).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await _http.DeleteAsync("/forwards/sctp/80", ct)).StatusCode);
        HttpResponseMessage big = await _http.PostAsync("/forwards", new StringContent(new string(' ', 64 * 1024) + "{}"), ct);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, big.StatusCode);
        // The API goes on after all of that.
        Assert.Equal("[]", await _http.GetStringAsync("/forwards", ct));
    }

    [Fact]
    public void The_socket_is_0600_and_a_file_in_its_place_is_refused_and_kept()
    {
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(_dir, "api.sock")));
        string precious = Path.Combine(_dir, "precious");
        File.WriteAllText(precious, "keep me");

        Assert.Throws<IOException>(() => new ControlApi(_server, precious).Dispose());

        Assert.Equal("keep me", File.ReadAllText(precious));
    }

    [Fact]
    public void The_api_removes_its_own_socket_when_it_stops()
    {
        string path = Path.Combine(_dir, "own.sock");
        var api = new ControlApi(_server, path);
        Assert.True(File.Exists(path));

        api.Dispose();

        Assert.False(File.Exists(path));
    }
}
