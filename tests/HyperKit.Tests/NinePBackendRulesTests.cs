using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.HyperKit.HostFs;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.NineP.Tests;
using P9Errno = Kit.NineP.Protocol.Errno;

#pragma warning disable xUnit1051

namespace Kit.HyperKit.Tests;

/// <summary>
/// The same hostile 9P2000.L inputs against both backends, each over loopback TCP: the DataKit-style Vfs server
/// (NinePServer over an in-memory tree) and the host-directory server. What the shared rules (names, fids, Tversion,
/// framing) say must hold for both, with the same errors.
/// </summary>
public sealed class NinePBackendRulesTests : IAsyncLifetime
{
    private const int MaxFids = 8;
    private readonly DirectoryInfo _export = Directory.CreateTempSubdirectory("kit-rules-");
    private NinePServer _vfs = null!;
    private HostFsTcpServer _host = null!;
    private int _vfsPort;

    public static TheoryData<string> Backends => ["vfs", "host"];

    public ValueTask InitializeAsync()
    {
        _vfs = new NinePServer(() => new MemoryFileSystem(), new NinePServerOptions { MaxFidsPerConnection = MaxFids });
        _vfsPort = ((IPEndPoint)_vfs.Listen(new ListenAddress(new IPEndPoint(IPAddress.Loopback, 0), "tcp://127.0.0.1:0"))).Port;
        _host = new HostFsTcpServer(new HostFsOptions(_export.FullName) { MaxFids = MaxFids });
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        await _vfs.DisposeAsync();
        await _host.DisposeAsync();
        _export.Delete(recursive: true);
    }

    private int Port(string backend) => backend == "vfs" ? _vfsPort : _host.Port;

    private async Task<NinePClient> Connect(string backend)
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Port(backend));
        return await NinePClient.StartAsync(tcp.GetStream(), Dialect.Linux, 65536);
    }

    private static async Task<uint> Errno(NinePClient c, Fcall t) =>
        (await Assert.ThrowsAsync<NinePException>(() => c.RpcAsync(t))).Errno;

    public static TheoryData<string, string, uint> BadNames()
    {
        var data = new TheoryData<string, string, uint>();
        foreach (string backend in new[] { "vfs", "host" })
        {
            data.Add(backend, "", P9Errno.EINVAL);
            data.Add(backend, ".", P9Errno.EINVAL);
            data.Add(backend, "..", P9Errno.EINVAL);
            data.Add(backend, "a/b", P9Errno.EINVAL);
            data.Add(backend, "../b", P9Errno.EINVAL);
            data.Add(backend, "a\0b", P9Errno.EINVAL);
            data.Add(backend, new string('n', 256), P9Errno.ENAMETOOLONG);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(BadNames))]
    public async Task Every_message_that_names_an_entry_refuses_the_same_bad_names(string backend, string name, uint errno)
    {
        await using NinePClient c = await Connect(backend);
        uint dir = await c.WalkAsync("");
        Fcall[] calls =
        [
            new() { Type = MessageType.Tlcreate, Fid = dir, Name = name, Flags = P9.LORdwr, LMode = 0x1A4 },
            new() { Type = MessageType.Tmkdir, DFid = dir, Name = name, LMode = 0x1ED },
            new() { Type = MessageType.Tsymlink, Fid = dir, Name = name, Name2 = "target" },
            new() { Type = MessageType.Tunlinkat, Fid = dir, Name = name },
            new() { Type = MessageType.Trenameat, Fid = dir, Name = "x", DFid = dir, Name2 = name },
        ];
        foreach (Fcall t in calls)
        {
            Assert.Equal(errno, await Errno(c, t));
        }
        // Twalk allows ".." (the parent) and nothing else of these.
        if (name != "..")
        {
            Assert.Equal(errno, await Errno(c, new Fcall { Type = MessageType.Twalk, Fid = dir, NewFid = 77, Wnames = [name] }));
        }
        Assert.Empty(_export.GetFileSystemInfos());
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public async Task Fids_are_bounded_and_must_be_known_and_free(string backend)
    {
        await using NinePClient c = await Connect(backend);
        Assert.Equal(P9Errno.EBADF, await Errno(c, new Fcall { Type = MessageType.Twalk, Fid = 4242, NewFid = 4243 }));
        Assert.Equal(P9Errno.EBADF, await Errno(c, new Fcall { Type = MessageType.Tclunk, Fid = 4242 }));
        uint used = await c.WalkAsync("");
        Assert.Equal(P9Errno.EBADF, await Errno(c, new Fcall { Type = MessageType.Twalk, Fid = c.RootFid, NewFid = used, Wnames = [".."] }));
        Assert.Equal(P9Errno.EBADF, await Errno(c, new Fcall { Type = MessageType.Tattach, Fid = used, Afid = P9.NoFid, Uname = "u", Aname = "" }));
        Assert.Equal(P9Errno.EBADF, await Errno(c, new Fcall { Type = MessageType.Twalk, Fid = c.RootFid, NewFid = P9.NoFid }));
        await c.ClunkAsync(used);
        uint next = 1000, added = 0;
        while (true)
        {
            try
            {
                await c.RpcAsync(new Fcall { Type = MessageType.Twalk, Fid = c.RootFid, NewFid = next++ });
                added++;
            }
            catch (NinePException e)
            {
                Assert.Equal(P9Errno.EMFILE, e.Errno);
                break;
            }
            Assert.True(added < 100, "the fid table is not bounded");
        }
        Assert.Equal(MaxFids - 1u, added); // the root fid is the first
    }

    public static TheoryData<string, string, uint, string> Versions()
    {
        var data = new TheoryData<string, string, uint, string>();
        foreach (string backend in new[] { "vfs", "host" })
        {
            data.Add(backend, "9P2000.L", 8192, "9P2000.L");
            data.Add(backend, "9P2000.L", 4095, "unknown");
            data.Add(backend, "9P3000", 8192, "unknown");
            data.Add(backend, "9P2000.u", 8192, backend == "vfs" ? "9P2000.u" : "unknown");
        }
        return data;
    }

    private static async Task<byte[]?> Exchange(NetworkStream s, byte[] frame)
    {
        await s.WriteAsync(frame);
        byte[] header = new byte[4];
        try
        {
            await s.ReadExactlyAsync(header);
        }
        catch (Exception e) when (e is EndOfStreamException or IOException)
        {
            return null;
        }
        byte[] reply = new byte[BinaryPrimitives.ReadUInt32LittleEndian(header)];
        header.CopyTo(reply, 0);
        await s.ReadExactlyAsync(reply.AsMemory(4));
        return reply;
    }

    [Theory]
    [MemberData(nameof(Versions))]
    public async Task Tversion_has_one_floor_and_one_answer_for_what_is_not_served(string backend, string version, uint msize, string expected)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Port(backend));
        byte[] frame = new byte[256];
        int n = FcallCodec.Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = msize, Version = version }, Dialect.Linux, frame);
        byte[] reply = (await Exchange(tcp.GetStream(), frame[..n]))!;
        Assert.True(FcallCodec.TryDecode(reply, Dialect.Linux, out Fcall r, out string why), why);
        Assert.Equal(MessageType.Rversion, r.Type);
        Assert.Equal(expected, r.Version);
    }

    [Theory]
    [InlineData("vfs", 3u)]
    [InlineData("vfs", 70_000u)]
    [InlineData("host", 3u)]
    [InlineData("host", 70_000u)]
    public async Task A_frame_below_the_header_or_above_msize_ends_the_connection(string backend, uint size)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Port(backend));
        NetworkStream s = tcp.GetStream();
        byte[] version = new byte[256];
        int n = FcallCodec.Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 65536, Version = P9.VersionL }, Dialect.Linux, version);
        Assert.NotNull(await Exchange(s, version[..n]));
        byte[] bad = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(bad, size);
        bad[4] = (byte)MessageType.Tclunk;
        Assert.Null(await Exchange(s, bad));
    }
}
