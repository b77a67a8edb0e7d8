using System.Net;
using System.Net.Sockets;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.NineP.Tests;

/// <summary>Listen addresses (the original's conduit/basic cases, §7.1) and the Unix-socket transport.</summary>
public sealed class TransportTests
{
    [Theory]
    [InlineData("tcp://127.0.0.1:1234", "tcp://127.0.0.1:1234")]
    [InlineData("tcp://localhost:1234", "tcp://127.0.0.1:1234")]
    [InlineData("tcp://127.0.0.1", "tcp://127.0.0.1:5640")]
    [InlineData("tcp://[::1]:99", "tcp://[::1]:99")]
    [InlineData("unix:/tmp/kit.sock", "unix:/tmp/kit.sock")]
    [InlineData("file:///var/run/datakit.sock", "unix:/var/run/datakit.sock")]
    [InlineData("unix:///run/kit.sock", "unix:/run/kit.sock")]
    [InlineData("tcp://127.0.0.1:0", "tcp://127.0.0.1:0")]
    [InlineData("tcp://:7000", "tcp://127.0.0.1:7000")]
    [InlineData("tcp://[::1]", "tcp://[::1]:5640")]
    [InlineData("tcp://127.0.0.1:1234/", "tcp://127.0.0.1:1234")]
    public void ListenAddressesParseAndPrint(string text, string printed)
    {
        Assert.True(ListenAddress.TryParse(text, out ListenAddress? a, out string error), error);
        Assert.Equal(printed, a!.ToString());
    }

    [Theory]
    [InlineData("5640")]
    [InlineData("http://127.0.0.1:80")]
    [InlineData("tcp://127.0.0.1:99999")]
    [InlineData("tcp://example.com:5640")]
    [InlineData("unix:")]
    [InlineData("unix://")]
    [InlineData("tcp://127.0.0.1:-1")]
    [InlineData("tcp://127.0.0.1:http")]
    public void BadListenAddressesAreRejectedWithAReason(string text)
    {
        Assert.False(ListenAddress.TryParse(text, out _, out string error));
        Assert.NotEmpty(error);
    }

    /// <summary>
    /// A server to connect to (kit vm run --share TAG=tcp://HOST:PORT) is read by the same parser, with two differences:
    /// a host name is allowed (looked up at each connect) and port 0 is not.
    /// </summary>
    [Theory]
    [InlineData("tcp://127.0.0.1:5641", "tcp://127.0.0.1:5641")]
    [InlineData("tcp://[::1]:99", "tcp://[::1]:99")]
    [InlineData("tcp://datakit.example:5640", "tcp://datakit.example:5640")]
    [InlineData("tcp://datakit.example", "tcp://datakit.example:5640")]
    [InlineData("tcp://localhost:7", "tcp://localhost:7")]
    [InlineData("unix:/tmp/kit.sock", "unix:/tmp/kit.sock")]
    [InlineData("unix:///tmp/kit.sock", "unix:/tmp/kit.sock")]
    [InlineData("unix:relative.sock", "unix:relative.sock")]
    [InlineData("file:///var/run/datakit.sock", "unix:/var/run/datakit.sock")]
    public void ServerAddressesParseAndPrint(string text, string printed)
    {
        Assert.True(ListenAddress.TryParseServer(text, out ListenAddress? a, out string error), error);
        Assert.Equal(printed, a!.ToString());
    }

    [Fact]
    public void AServerNameIsKeptForLookupAtConnectTime()
    {
        Assert.True(ListenAddress.TryParseServer("tcp://datakit.example:5640", out ListenAddress? a, out _));
        DnsEndPoint ep = Assert.IsType<DnsEndPoint>(a!.EndPoint);
        Assert.Equal(("datakit.example", 5640), (ep.Host, ep.Port));
        Assert.False(ListenAddress.TryParse("tcp://datakit.example:5640", out _, out string error));
        Assert.Contains("not an IP address", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("tcp://127.0.0.1:0")]
    [InlineData("tcp://127.0.0.1:65536")]
    [InlineData("tcp://bad host:5640")]
    [InlineData("tcp://host!:5640")]
    [InlineData("http://127.0.0.1:80")]
    [InlineData("127.0.0.1:5640")]
    [InlineData("unix:")]
    [InlineData("")]
    public void BadServerAddressesAreRejectedWithAReason(string text)
    {
        Assert.False(ListenAddress.TryParseServer(text, out _, out string error));
        Assert.NotEmpty(error);
    }

    [Fact]
    public async Task ConnectsToAServerByName()
    {
        // localhost stays a name when connecting: the dual-mode socket tries ::1 and 127.0.0.1 in turn.
        var fs = new MemoryFileSystem();
        fs.Root.Add(new MemoryFileSystem.MemFile("f") { Content = "by name"u8.ToArray() });
        await using var server = new NinePServer(() => fs);
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var bound = (IPEndPoint)server.Listen(any!);
        Assert.True(ListenAddress.TryParseServer($"tcp://localhost:{bound.Port}", out ListenAddress? byName, out string error), error);
        await using NinePClient c = await NinePClient.ConnectAsync(byName!, Dialect.Linux, ct: TestContext.Current.CancellationToken);
        Assert.Equal("by name", await c.ReadTextAsync("f"));
    }

    [Fact]
    public async Task ServesOverAUnixSocket()
    {
        string path = Path.Combine(Path.GetTempPath(), $"kit-9p-{Guid.NewGuid():N}.sock");
        var fs = new MemoryFileSystem();
        fs.Root.Add(new MemoryFileSystem.MemFile("f") { Content = "over unix"u8.ToArray() });
        await using var server = new NinePServer(() => fs);
        ListenAddress.TryParse($"unix:{path}", out ListenAddress? address, out _);
        server.Listen(address!);
        try
        {
            await using NinePClient c = await NinePClient.ConnectAsync(address!, Dialect.Linux);
            Assert.Equal("over unix", await c.ReadTextAsync("f"));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task TooManyConnectionsAreRefusedWithoutHarm()
    {
        var fs = new MemoryFileSystem();
        await using var server = new NinePServer(() => fs, new NinePServerOptions { MaxConnections = 2 });
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var ep = (IPEndPoint)server.Listen(any!);
        var address = new ListenAddress(ep, "x");
        await using NinePClient a = await NinePClient.ConnectAsync(address);
        await using NinePClient b = await NinePClient.ConnectAsync(address);
        await Assert.ThrowsAnyAsync<Exception>(async () =>
        {
            await using NinePClient c = await NinePClient.ConnectAsync(address);
        });
        Assert.Empty(await a.ListAsync(""));
        using Socket probe = address.CreateSocket();
        Assert.Equal(SocketType.Stream, probe.SocketType);
    }
}
