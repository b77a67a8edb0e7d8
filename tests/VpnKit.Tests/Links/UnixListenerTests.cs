using System.Net;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Links;

/// <summary>
/// Security review finding 5: VPNKit's Unix listeners (QEMU stream, dgram, VMN3T; the control API in Kit.Tests) refuse to
/// replace anything at their path that is not a stale socket, and leave the file as it was.
/// </summary>
public sealed class UnixListenerTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-vpnkit-listen-").FullName;
    private readonly VpnKitServer _server = new(new VpnKitServerOptions { DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)] }, NullLoggerFactory.Instance);

    public UnixListenerTests() => _server.Start();

    public void Dispose()
    {
        _server.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    public static TheoryData<string> Listeners => new("qemu", "dgram", "vmnet");

    [Theory]
    [MemberData(nameof(Listeners))]
    public void A_regular_file_at_the_path_is_refused_and_kept(string listener)
    {
        string path = Path.Combine(_dir, "precious");
        File.WriteAllText(path, "keep me");

        Assert.Throws<IOException>(() => Listen(listener, path));

        Assert.Equal("keep me", File.ReadAllText(path));
    }

    [Theory]
    [MemberData(nameof(Listeners))]
    public void A_listener_removes_its_own_socket_when_the_server_stops(string listener)
    {
        string path = Path.Combine(_dir, $"{listener}.sock");
        var server = new VpnKitServer(new VpnKitServerOptions { DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)] }, NullLoggerFactory.Instance);
        server.Start();
        Listen(server, listener, path);
        Assert.True(File.Exists(path));

        server.Dispose();

        Assert.False(File.Exists(path));
    }

    private void Listen(string listener, string path) => Listen(_server, listener, path);

    private static void Listen(VpnKitServer server, string listener, string path)
    {
        switch (listener)
        {
            case "qemu":
                server.ListenQemu(path);
                break;
            case "dgram":
                server.ListenDgram(path);
                break;
            case "vmnet":
                server.ListenVmnet(path);
                break;
        }
    }
}
