using System.Net;
using System.Net.Sockets;
using Kit.HyperKit.Devices.Virtio.NineP;

namespace Kit.HyperKit.Tests;

/// <summary>
/// <c>--share TAG=tcp://HOST:PORT|unix:PATH</c>: the relay's address is read by NineP's parser (the one
/// <c>kit data serve --listen-9p</c> uses), once, when the share is created.
/// </summary>
public sealed class NinePSharesTests
{
    [Theory]
    [InlineData("tcp://127.0.0.1:0")]
    [InlineData("tcp://127.0.0.1:70000")]
    [InlineData("tcp://bad host:5640")]
    [InlineData("unix:")]
    public void A_bad_server_address_fails_when_the_share_is_created_naming_the_tag(string target)
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => NinePShares.Create("data", target, readOnly: false));
        Assert.StartsWith("share data: not a 9P server address: ", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Read_only_applies_to_directories_only()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => NinePShares.Create("data", "tcp://127.0.0.1:5640", readOnly: true));
        Assert.Contains(",ro", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Trusted_applies_to_directories_only()
    {
        ArgumentException e = Assert.Throws<ArgumentException>(() => NinePShares.Create("data", "unix:/run/kit/data.sock", readOnly: false, trusted: true));
        Assert.Contains(",trusted", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_connector_reaches_a_server_by_host_name()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        Func<Socket> connect = StreamNinePChannel.Connector($"tcp://localhost:{port}");
        using Socket client = connect();
        using Socket accepted = await listener.AcceptSocketAsync(TestContext.Current.CancellationToken);
        Assert.True(client.NoDelay);
        Assert.Equal(port, ((IPEndPoint)client.RemoteEndPoint!).Port);
    }

    [Theory]
    [InlineData("unix:")]
    [InlineData("unix://")]
    public async Task The_connector_reaches_a_unix_socket_in_both_spellings(string prefix)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kit-9p-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        try
        {
            // An absolute path after unix:// gives unix:///tmp/..., the URL spelling.
            using Socket client = StreamNinePChannel.Connector(prefix + path)();
            using Socket accepted = await listener.AcceptAsync(TestContext.Current.CancellationToken);
            Assert.True(client.Connected);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
