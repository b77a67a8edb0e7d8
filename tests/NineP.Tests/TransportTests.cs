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
    public void BadListenAddressesAreRejectedWithAReason(string text)
    {
        Assert.False(ListenAddress.TryParse(text, out _, out string error));
        Assert.NotEmpty(error);
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
