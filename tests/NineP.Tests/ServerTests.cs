using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.NineP.Tests;

/// <summary>The server over real loopback sockets, driven by our client and by raw bytes.</summary>
public sealed class ServerTests : IAsyncLifetime
{
    private readonly MemoryFileSystem _fs = new();
    private NinePServer _server = null!;
    private ListenAddress _address = null!;
    private readonly MemoryFileSystem.BlockingFile _blocking = new("stream");

    public ValueTask InitializeAsync()
    {
        _fs.Root.Add(_blocking);
        var hello = new MemoryFileSystem.MemFile("hello") { Content = "hello world\n"u8.ToArray() };
        _fs.Root.Add(hello);
        _server = new NinePServer(() => _fs, new NinePServerOptions { MaxFidsPerConnection = 200 });
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var ep = (IPEndPoint)_server.Listen(any!);
        _address = new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}");
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    [Theory]
    [InlineData(Dialect.Legacy)]
    [InlineData(Dialect.Unix)]
    [InlineData(Dialect.Linux)]
    public async Task CreateWriteReadListRenameRemove(Dialect dialect)
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, dialect);
        Assert.Equal(1024u * 1024, c.Msize);
        await c.MkdirAsync("", "dir");
        if (dialect == Dialect.Linux)
        {
            uint dir = await c.WalkAsync("dir");
            await c.RpcAsync(new Fcall { Type = MessageType.Tlcreate, Fid = dir, Name = "f", Flags = P9.LORdwr | P9.LOCreat, LMode = 0x1A4 });
            await c.WriteAsync(dir, 0, "data"u8.ToArray());
            await c.ClunkAsync(dir);
        }
        else
        {
            await c.CreateFileAsync("dir", "f", "data"u8.ToArray());
        }
        Assert.Equal("data", await c.ReadTextAsync("dir/f"));
        Assert.Equal(["dir", "hello", "stream"], await c.ListAsync(""));
        Assert.Equal(["f"], await c.ListAsync("dir"));
        if (dialect == Dialect.Linux)
        {
            uint d = await c.WalkAsync("dir");
            await c.RpcAsync(new Fcall { Type = MessageType.Trenameat, Fid = d, Name = "f", DFid = d, Name2 = "g" });
            await c.RpcAsync(new Fcall { Type = MessageType.Tunlinkat, Fid = d, Name = "g" });
            await c.ClunkAsync(d);
        }
        else
        {
            await c.WstatPathAsync("dir/f", Stat.DontTouch with { Name = "g" });
            Assert.Equal(["g"], await c.ListAsync("dir"));
            await c.RemovePathAsync("dir/g");
        }
        Assert.Empty(await c.ListAsync("dir"));
    }

    [Fact]
    public async Task SymlinksUseDmSymlinkAndExtensionOnUnix()
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        await c.CreateFileAsync("", "link", default, P9.DmSymlink | 0x1FF, "target");
        Stat s = await c.StatPathAsync("link");
        Assert.Equal("target", s.Extension);
        Assert.NotEqual(0u, s.Mode & P9.DmSymlink);
        Assert.Equal(P9.QtSymlink, s.Qid.Type);
    }

    [Fact]
    public async Task FlushCancelsABlockedReadWhileOtherRequestsProceed()
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        uint fid = await c.WalkAsync("stream");
        await c.OpenAsync(fid, P9.OREAD);
        using var cts = new CancellationTokenSource();
        Task<byte[]> blocked = c.ReadAsync(fid, 0, 100, cts.Token);
        // Other requests on the same connection are served while the read blocks.
        Assert.Equal("hello world\n", await c.ReadTextAsync("hello"));
        Assert.False(blocked.IsCompleted);
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => blocked);
        Assert.Equal(1, _blocking.Cancelled);
        Assert.Equal("hello world\n", await c.ReadTextAsync("hello"));
    }

    [Fact]
    public async Task ErrorsCarryErrnoOnUnixAndLinux()
    {
        await using NinePClient u = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => u.RpcAsync(new Fcall { Type = MessageType.Tclunk, Fid = 999 }));
        Assert.Equal(Errno.EBADF, e.Errno);
        Assert.Equal("Unknown fid 999", e.Message);
        e = await Assert.ThrowsAsync<NinePException>(() => u.WalkAsync("nope"));
        Assert.Equal(Errno.ENOENT, e.Errno);
        Assert.Equal("No such file or directory", e.Message);
        await using NinePClient l = await NinePClient.ConnectAsync(_address, Dialect.Linux);
        uint file = await l.WalkAsync("hello");
        e = await Assert.ThrowsAsync<NinePException>(() => l.WalkAsync(file, ["x"]));
        Assert.Equal(Errno.ENOTDIR, e.Errno);
        // walk(5): a failure after the first name is a partial Rwalk, which the client reports as ENOENT.
        e = await Assert.ThrowsAsync<NinePException>(() => l.WalkAsync("hello/x"));
        Assert.Equal(Errno.ENOENT, e.Errno);
    }

    [Fact]
    public async Task DotDotBeyondTheRootStaysAtTheRoot()
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        uint fid = await c.WalkAsync(c.RootFid, ["..", "..", "..", "hello"]);
        Stat s = await c.StatAsync(fid);
        Assert.Equal("hello", s.Name);
    }

    [Fact]
    public async Task FidsAreBoundedPerConnection()
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        var errors = 0;
        for (int i = 0; i < 500; i++)
        {
            try
            {
                await c.WalkAsync(c.RootFid, ["hello"]);
            }
            catch (NinePException e) when (e.Errno == Errno.EMFILE)
            {
                errors++;
            }
        }
        Assert.Equal(500 - 199, errors);
        // The connection still works.
        await c.RpcAsync(new Fcall { Type = MessageType.Tstat, Fid = c.RootFid });
    }

    [Fact]
    public async Task ThousandsOfFidsOnManyConnectionsAreReleasedOnClose()
    {
        for (int conn = 0; conn < 5; conn++)
        {
            await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Linux);
            var walks = new List<Task<uint>>();
            for (int i = 0; i < 150; i++)
            {
                walks.Add(c.WalkAsync(c.RootFid, ["hello"]));
            }
            await Task.WhenAll(walks);
        }
        await WaitForAsync(() => _server.ConnectionCount == 0);
    }

    private static async Task WaitForAsync(Func<bool> condition)
    {
        for (int i = 0; i < 200 && !condition(); i++)
        {
            await Task.Delay(50);
        }
        Assert.True(condition());
    }

    private async Task<Socket> RawConnectAsync()
    {
        var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await s.ConnectAsync(_address.EndPoint);
        return s;
    }

    private static async Task<bool> IsClosedAsync(Socket s)
    {
        byte[] buffer = new byte[4096];
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            while (true)
            {
                int n = await s.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
                if (n == 0)
                {
                    return true;
                }
            }
        }
        catch (SocketException)
        {
            return true;
        }
    }

    public static TheoryData<string> HostileFrames() =>
    [
        "03000000",                             // size below the header
        "ffffff7f 64 ffff",                     // 2 GiB frame
        "0b000000 6e 0100 01000000",            // Twalk cut short (before Tversion)
        "15000000 64 ffff 00200000 0800 3950323030302e", // Tversion with a size that lies (truncated)
    ];

    [Theory]
    [MemberData(nameof(HostileFrames))]
    public async Task MalformedFramesCloseTheConnectionNotTheServer(string hex)
    {
        using (Socket s = await RawConnectAsync())
        {
            await s.SendAsync(Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal)));
            s.Shutdown(SocketShutdown.Send);
            Assert.True(await IsClosedAsync(s));
        }
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        Assert.Equal("hello world\n", await c.ReadTextAsync("hello"));
    }

    [Fact]
    public async Task MalformedBodyAfterVersionClosesTheConnection()
    {
        using Socket s = await RawConnectAsync();
        byte[] version = new byte[64];
        int n = FcallCodec.Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 8192, Version = "9P2000.u" }, Dialect.Unix, version);
        await s.SendAsync(version.AsMemory(0, n));
        // A Twalk claiming 3 names but carrying one.
        await s.SendAsync(Convert.FromHexString("140000006e010001000000020000000300010061"));
        Assert.True(await IsClosedAsync(s));
    }

    [Fact]
    public async Task UnknownMessageTypeGetsAnError()
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        // Type 200 is not a 9P message; the server answers with an error rather than dying.
        var raw = new Fcall { Type = (MessageType)200 };
        await Assert.ThrowsAnyAsync<Exception>(() => c.RpcAsync(raw));
        Assert.Equal("hello world\n", await c.ReadTextAsync("hello"));
    }

    [Fact]
    public async Task ClientVanishingMidRequestReleasesEverything()
    {
        int before = _blocking.Cancelled;
        NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Unix);
        uint fid = await c.WalkAsync("stream");
        await c.OpenAsync(fid, P9.OREAD);
        _ = c.ReadAsync(fid, 0, 10);
        await Task.Delay(100);
        await c.DisposeAsync();
        await WaitForAsync(() => _blocking.Cancelled == before + 1 && _server.ConnectionCount == 0);
    }

    [Fact]
    public async Task VersionStringsAreNegotiated()
    {
        foreach ((string asked, string answered) in new[] { ("9P2000.L", "9P2000.L"), ("9P2000.u", "9P2000.u"), ("9P2000", "9P2000"), ("9P2000.x", "9P2000"), ("bogus", "unknown") })
        {
            using Socket s = await RawConnectAsync();
            byte[] buffer = new byte[128];
            int n = FcallCodec.Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 1 << 24, Version = asked }, Dialect.Legacy, buffer);
            await s.SendAsync(buffer.AsMemory(0, n));
            int got = await s.ReceiveAsync(buffer, SocketFlags.None);
            Assert.True(FcallCodec.TryDecode(buffer.AsSpan(0, got), Dialect.Legacy, out Fcall r, out string reason), reason);
            Assert.Equal(answered, r.Version);
            if (answered != "unknown")
            {
                Assert.Equal(new NinePServerOptions().MaxMessageSize, r.Msize);
            }
        }
    }

    [Fact]
    public async Task LargeWritesAndReadsUseTheWholeMsize()
    {
        await using NinePClient c = await NinePClient.ConnectAsync(_address, Dialect.Linux);
        byte[] data = new byte[3 * 1024 * 1024 + 17];
        new Random(1).NextBytes(data);
        uint dir = await c.WalkAsync("");
        await c.RpcAsync(new Fcall { Type = MessageType.Tlcreate, Fid = dir, Name = "big", Flags = P9.LORdwr, LMode = 0x1A4 });
        await c.WriteAsync(dir, 0, data);
        await c.ClunkAsync(dir);
        Assert.Equal(data, await c.ReadAllAsync("big"));
        Assert.True(Encoding.ASCII.GetByteCount("x") == 1);
    }
}
