using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.HyperKit.HostFs;
using Kit.NineP.Client;
using Kit.NineP.Protocol;

// The 9P client calls below take the test's token through Rpc() where it matters; the rest are bounded by the server.
#pragma warning disable xUnit1051

namespace Kit.HyperKit.Tests;

/// <summary>Serves a <see cref="HostFsSession"/> per accepted loopback TCP connection (tests and diod clients).</summary>
internal sealed class HostFsTcpServer : IAsyncDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _accept;

    public HostFsTcpServer(HostFsOptions options)
    {
        _listener.Start();
        Port = ((IPEndPoint)_listener.LocalEndpoint).Port;
        _accept = Task.Run(async () =>
        {
            while (!_stop.IsCancellationRequested)
            {
                TcpClient client;
                try
                {
                    client = await _listener.AcceptTcpClientAsync(_stop.Token);
                }
                catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
                {
                    return;
                }
                _ = Task.Run(async () =>
                {
                    using (client)
                    {
                        await HostFsServer.ServeStreamAsync(client.GetStream(), options, _stop.Token);
                    }
                });
            }
        });
    }

    public int Port { get; }

    public async Task<NinePClient> ConnectAsync()
    {
        var tcp = new TcpClient();
        await tcp.ConnectAsync(IPAddress.Loopback, Port);
        return await NinePClient.StartAsync(tcp.GetStream(), Dialect.Linux, 65536);
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Stop();
        await _accept;
    }
}

/// <summary>The built-in 9P2000.L server over a host directory, driven by the project's 9P client over TCP.</summary>
public sealed class HostFsTests : IAsyncLifetime
{
    private readonly DirectoryInfo _top = Directory.CreateTempSubdirectory("kit-hostfs-");
    private string Root => Path.Combine(_top.FullName, "export");
    private string Outside => Path.Combine(_top.FullName, "secret");
    private HostFsTcpServer _server = null!;
    private HostFsTcpServer _readOnly = null!;
    private NinePClient _c = null!;

    public async ValueTask InitializeAsync()
    {
        Directory.CreateDirectory(Root);
        File.WriteAllText(Outside, "outside\n");
        File.WriteAllText(Path.Combine(Root, "hello"), "hello world\n");
        Directory.CreateDirectory(Path.Combine(Root, "sub"));
        File.WriteAllText(Path.Combine(Root, "sub", "inner"), "inner\n");
        File.CreateSymbolicLink(Path.Combine(Root, "abs"), "/");
        File.CreateSymbolicLink(Path.Combine(Root, "up"), "../..");
        File.CreateSymbolicLink(Path.Combine(Root, "secretlink"), Outside);
        _server = new HostFsTcpServer(new HostFsOptions(Root));
        _readOnly = new HostFsTcpServer(new HostFsOptions(Root, ReadOnly: true));
        _c = await _server.ConnectAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await _c.DisposeAsync();
        await _server.DisposeAsync();
        await _readOnly.DisposeAsync();
        _top.Delete(recursive: true);
    }

    private Task<Fcall> Rpc(Fcall t) => _c.RpcAsync(t, TestContext.Current.CancellationToken);

    private async Task<uint> Errno(Func<Task> action)
    {
        NinePException e = await Assert.ThrowsAsync<NinePException>(action);
        return e.Errno;
    }

    private async Task<uint> CreateAsync(string dir, string name, uint flags = P9.LORdwr, uint mode = 0x1A4)
    {
        uint fid = await _c.WalkAsync(dir);
        await Rpc(new Fcall { Type = MessageType.Tlcreate, Fid = fid, Name = name, Flags = flags, LMode = mode });
        return fid;
    }

    [Fact]
    public async Task Create_write_read_and_list_reach_the_host_directory()
    {
        uint fid = await CreateAsync("sub", "new");
        Assert.Equal(5, await _c.WriteAsync(fid, 0, "guest"u8.ToArray()));
        await _c.ClunkAsync(fid);
        Assert.Equal("guest", File.ReadAllText(Path.Combine(Root, "sub", "new")));
        Assert.Equal("hello world\n", await _c.ReadTextAsync("hello"));
        IReadOnlyList<string> names = await _c.ListAsync("sub");
        Assert.Contains("inner", names);
        Assert.Contains("new", names);

        // Many entries: readdir resumes from the host's own offsets without repeating or skipping.
        Directory.CreateDirectory(Path.Combine(Root, "many"));
        for (int i = 0; i < 500; i++)
        {
            File.WriteAllText(Path.Combine(Root, "many", $"file-with-a-long-name-{i:D4}"), "");
        }
        names = await _c.ListAsync("many");
        Assert.Equal(500, names.Count(n => n.StartsWith("file-with", StringComparison.Ordinal)));
        Assert.Equal(names.Count, names.Distinct().Count());
    }

    [Fact]
    public async Task Getattr_setattr_mkdir_symlink_link_rename_unlink_and_statfs_act_on_the_host()
    {
        uint hello = await _c.WalkAsync("hello");
        Fcall attr = await Rpc(new Fcall { Type = MessageType.Tgetattr, Fid = hello, RequestMask = P9.GetattrBasic });
        Assert.Equal(12UL, attr.Attr!.Size);
        Assert.Equal(P9.SIfReg, attr.Attr.Mode & 0xF000);
        Assert.Equal((ulong)new UnixFileInfo(Path.Combine(Root, "hello")).Inode, attr.Attr.Qid.Path);
        await Rpc(new Fcall { Type = MessageType.Tsetattr, Fid = hello, SetAttr = new LSetAttr { Valid = P9.AttrSize | P9.AttrMode, Size = 5, Mode = 0x1ED } });
        Assert.Equal("hello", File.ReadAllText(Path.Combine(Root, "hello")));
        Assert.Equal("755", Kit.Testing.ProcessRunner.Run("stat", ["-c", "%a", Path.Combine(Root, "hello")]).EnsureSuccess().StandardOutput.Trim());
        await Rpc(new Fcall { Type = MessageType.Tsetattr, Fid = hello, SetAttr = new LSetAttr { Valid = P9.AttrMtime | 0x100, MtimeSec = 1_000_000_000 } });
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(1_000_000_000).UtcDateTime, File.GetLastWriteTimeUtc(Path.Combine(Root, "hello")));

        uint root = await _c.WalkAsync("");
        Fcall mk = await Rpc(new Fcall { Type = MessageType.Tmkdir, DFid = root, Name = "made", LMode = 0x1ED });
        Assert.True(mk.Qid.IsDirectory);
        Assert.True(Directory.Exists(Path.Combine(Root, "made")));
        await Rpc(new Fcall { Type = MessageType.Tsymlink, Fid = root, Name = "ln", Name2 = "hello" });
        Assert.Equal("hello", new FileInfo(Path.Combine(Root, "ln")).LinkTarget);
        uint ln = await _c.WalkAsync("ln");
        Assert.Equal("hello", (await Rpc(new Fcall { Type = MessageType.Treadlink, Fid = ln })).Name2);
        await Rpc(new Fcall { Type = MessageType.Tlink, DFid = root, Fid = hello, Name = "hard" });
        Assert.Equal("hello", File.ReadAllText(Path.Combine(Root, "hard")));
        uint made = await _c.WalkAsync("made");
        await Rpc(new Fcall { Type = MessageType.Trenameat, Fid = root, Name = "hard", DFid = made, Name2 = "moved" });
        Assert.True(File.Exists(Path.Combine(Root, "made", "moved")));
        await Rpc(new Fcall { Type = MessageType.Trename, Fid = ln, DFid = made, Name = "ln2" });
        Assert.NotNull(new FileInfo(Path.Combine(Root, "made", "ln2")).LinkTarget);
        await Rpc(new Fcall { Type = MessageType.Tunlinkat, Fid = made, Name = "moved" });
        Assert.False(File.Exists(Path.Combine(Root, "made", "moved")));
        Assert.Equal(39u, await Errno(() => Rpc(new Fcall { Type = MessageType.Tunlinkat, Fid = root, Name = "made", Flags = P9.AtRemoveDir })));
        Fcall fs = await Rpc(new Fcall { Type = MessageType.Tstatfs, Fid = root });
        Assert.True(fs.StatFs!.BSize > 0 && fs.StatFs.NameLen > 0);
        Assert.Equal(95u, await Errno(() => Rpc(new Fcall { Type = MessageType.Txattrwalk, Fid = root, NewFid = 999, Name = "user.x" })));
        Assert.Equal(2u, await Errno(() => _c.WalkAsync("missing")));
    }

    [Fact]
    public async Task Nothing_outside_the_export_is_reachable()
    {
        // ".." at the root stays at the root.
        Fcall up = await Rpc(new Fcall { Type = MessageType.Twalk, Fid = _c.RootFid, NewFid = 100, Wnames = ["..", "..", "hello"] });
        Assert.Equal(3, up.Wqids.Length);
        Assert.Equal("hello world\n", Encoding.UTF8.GetString(await ReadFid(100)));
        // Symlinks are never followed by the server: walking through one is ENOTDIR, opening one is ELOOP.
        foreach (string symlink in new[] { "abs", "up", "secretlink" })
        {
            Fcall through = await Rpc(new Fcall { Type = MessageType.Twalk, Fid = _c.RootFid, NewFid = 101, Wnames = [symlink, "etc"] });
            Assert.Equal(P9.QtSymlink, Assert.Single(through.Wqids).Type); // walk(5): stops at the symlink, newfid not made
        }
        await Rpc(new Fcall { Type = MessageType.Twalk, Fid = _c.RootFid, NewFid = 101, Wnames = ["abs"] });
        Assert.Equal(20u, await Errno(() => Rpc(new Fcall { Type = MessageType.Twalk, Fid = 101, NewFid = 102, Wnames = ["etc"] })));
        uint link = await _c.WalkAsync("secretlink");
        Assert.Equal(40u, await Errno(() => Rpc(new Fcall { Type = MessageType.Tlopen, Fid = link, Flags = 0 })));
        Assert.Equal(40u, await Errno(() => Rpc(new Fcall { Type = MessageType.Tlopen, Fid = link, Flags = P9.LORdwr | P9.LOTrunc })));
        Assert.Equal("outside\n", File.ReadAllText(Outside));
        // Creating over a symlink does not follow it either.
        Assert.Equal(40u, await Errno(async () => await CreateAsync("", "secretlink", P9.LORdwr | P9.LOTrunc)));
        Assert.Equal("outside\n", File.ReadAllText(Outside));
        // Names are one component.
        Assert.Equal(22u, await Errno(async () => await CreateAsync("", "../escaped")));
        Assert.Equal(22u, await Errno(async () => await CreateAsync("", "..")));
        Assert.Equal(22u, await Errno(() => _c.WalkAsync(_c.RootFid, ["sub/inner"])));
        Assert.False(File.Exists(Path.Combine(_top.FullName, "escaped")));
        // No host device nodes.
        uint root = await _c.WalkAsync("");
        Assert.Equal(1u, await Errno(() => Rpc(new Fcall { Type = MessageType.Tmknod, DFid = root, Name = "disk", LMode = HostCalls.S_IFBLK | 0x180, Major = 8, Minor = 0 })));
        Assert.False(File.Exists(Path.Combine(Root, "disk")));
    }

    [Fact]
    public async Task A_host_name_that_is_not_UTF8_is_listed_walked_read_renamed_and_removed_byte_for_byte()
    {
        // Finding 10: Linux names are bytes. "f\xffo" is listed by Treaddir; it must also be walkable, and every
        // operation must reach the host file of exactly those bytes (NineString carries 0xff as U+DCFF).
        // The shell makes and checks the names: .NET's own file APIs would re-encode them as UTF-8.
        Kit.Testing.ProcessRunner.Run("sh", ["-c", @"cd ""$1"" && printf odd > ""$(printf 'f\377o')""", "sh", Root]).EnsureSuccess();
        bool HostHas(string octal) =>
            Kit.Testing.ProcessRunner.Run("sh", ["-c", $@"cd ""$1"" && test -f ""$(printf '{octal}')""", "sh", Root]).ExitCode == 0;
        Assert.True(HostHas(@"f\377o"));
        const string odd = "f\uDCFFo", renamed = "g\uDCFEo";

        Assert.Contains(odd, await _c.ListAsync(""));
        uint file = await _c.WalkAsync(_c.RootFid, [odd]);
        Assert.Equal("odd", Encoding.UTF8.GetString(await ReadFid(file)));

        uint root = await _c.WalkAsync("");
        await Rpc(new Fcall { Type = MessageType.Trenameat, Fid = root, Name = odd, DFid = root, Name2 = renamed });
        Assert.False(HostHas(@"f\377o"));
        Assert.True(HostHas(@"g\376o"));
        Assert.Contains(renamed, await _c.ListAsync(""));

        uint again = await _c.WalkAsync(_c.RootFid, [renamed]);
        await Rpc(new Fcall { Type = MessageType.Tremove, Fid = again });
        Assert.False(HostHas(@"g\376o"));
        Assert.DoesNotContain(renamed, await _c.ListAsync(""));
    }

    [Fact]
    public async Task A_read_only_export_refuses_every_change_with_EROFS()
    {
        await using NinePClient ro = await _readOnly.ConnectAsync();
        Assert.Equal("hello world\n", await ro.ReadTextAsync("hello"));
        uint hello = await ro.WalkAsync("hello");
        Assert.Equal(30u, (await Assert.ThrowsAsync<NinePException>(() => ro.RpcAsync(new Fcall { Type = MessageType.Tlopen, Fid = hello, Flags = P9.LOWronly }))).Errno);
        Assert.Equal(30u, (await Assert.ThrowsAsync<NinePException>(() => ro.RpcAsync(new Fcall { Type = MessageType.Tlopen, Fid = hello, Flags = P9.LOTrunc }))).Errno);
        Assert.Equal(30u, (await Assert.ThrowsAsync<NinePException>(() => ro.RpcAsync(new Fcall { Type = MessageType.Tsetattr, Fid = hello, SetAttr = new LSetAttr { Valid = P9.AttrSize } }))).Errno);
        uint root = await ro.WalkAsync("");
        Fcall[] changes =
        [
            new() { Type = MessageType.Tmkdir, DFid = root, Name = "d", LMode = 0x1ED },
            new() { Type = MessageType.Tsymlink, Fid = root, Name = "s", Name2 = "x" },
            new() { Type = MessageType.Tmknod, DFid = root, Name = "f", LMode = HostCalls.S_IFIFO | 0x1A4 },
            new() { Type = MessageType.Tunlinkat, Fid = root, Name = "hello" },
            new() { Type = MessageType.Trenameat, Fid = root, Name = "hello", DFid = root, Name2 = "h2" },
            new() { Type = MessageType.Tlink, DFid = root, Fid = hello, Name = "h3" },
        ];
        foreach (Fcall t in changes)
        {
            Assert.Equal(30u, (await Assert.ThrowsAsync<NinePException>(() => ro.RpcAsync(t))).Errno);
        }
        uint dir = await ro.WalkAsync("sub");
        Assert.Equal(30u, (await Assert.ThrowsAsync<NinePException>(() => ro.RpcAsync(new Fcall { Type = MessageType.Tlcreate, Fid = dir, Name = "n", Flags = P9.LORdwr, LMode = 0x1A4 }))).Errno);
        Assert.Equal("hello world\n", File.ReadAllText(Path.Combine(Root, "hello")));
        Assert.Equal(["abs", "hello", "secretlink", "sub", "up"], Directory.GetFileSystemEntries(Root).Select(Path.GetFileName).Order().ToArray());
    }

    [Fact]
    public void Malformed_frames_get_an_error_reply_and_never_throw()
    {
        using var session = new HostFsSession(new HostFsOptions(Root) { MaxFids = 64 });
        byte[] reply = new byte[70000];
        var version = new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 65536, Version = P9.VersionL };
        byte[] frame = new byte[256];
        int n = FcallCodec.Encode(version, Dialect.Linux, frame);
        Assert.True(session.Handle(frame.AsMemory(0, n), reply) > 0);
        Assert.Equal((byte)MessageType.Rversion, reply[4]);

        // A size field that lies about the frame, a truncated Twalk, a Twrite whose count exceeds its data,
        // an unknown type, an R-message: each is answered Rlerror with its tag.
        byte[] lying = [50, 0, 0, 0, (byte)MessageType.Tclunk, 7, 0, 1, 0, 0, 0];
        AssertLerror(session.Handle(lying, reply), reply, 7, 22);
        byte[] walk = [15, 0, 0, 0, (byte)MessageType.Twalk, 8, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        AssertLerror(session.Handle(walk, reply), reply, 8, 22);
        byte[] write = new byte[30];
        BinaryPrimitives.WriteUInt32LittleEndian(write, 30);
        write[4] = (byte)MessageType.Twrite;
        write[5] = 9;
        BinaryPrimitives.WriteUInt32LittleEndian(write.AsSpan(19), 1000);
        AssertLerror(session.Handle(write, reply), reply, 9, 22);
        AssertLerror(session.Handle(new byte[] { 7, 0, 0, 0, 250, 10, 0 }, reply), reply, 10, 95);
        AssertLerror(session.Handle(new byte[] { 11, 0, 0, 0, (byte)MessageType.Rlerror, 11, 0, 0, 0, 0, 0 }, reply), reply, 11, 22);
        Assert.Equal(0, session.Handle(new byte[] { 3, 0, 0 }, reply));

        var random = new Random(42);
        byte[] junk = new byte[300];
        for (int i = 0; i < 5000; i++)
        {
            int len = random.Next(7, junk.Length);
            random.NextBytes(junk.AsSpan(0, len));
            BinaryPrimitives.WriteUInt32LittleEndian(junk, (uint)len);
            junk[4] = (byte)(random.Next(6, 128) & ~1);
            _ = session.Handle(junk.AsMemory(0, len), reply);
        }
        Assert.True(session.FidCount <= 5000);
    }

    private static void AssertLerror(int n, byte[] reply, ushort tag, uint errno)
    {
        Assert.Equal(11, n);
        Assert.Equal((byte)MessageType.Rlerror, reply[4]);
        Assert.Equal(tag, BinaryPrimitives.ReadUInt16LittleEndian(reply.AsSpan(5)));
        Assert.Equal(errno, BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(7)));
    }

    private async Task<byte[]> ReadFid(uint fid)
    {
        await Rpc(new Fcall { Type = MessageType.Tlopen, Fid = fid, Flags = 0 });
        return await _c.ReadAsync(fid, 0, 4096);
    }

    /// <summary>The inode number of a path (what qid.path must be).</summary>
    private sealed class UnixFileInfo(string path)
    {
        public ulong Inode { get; } = ulong.Parse(Kit.Testing.ProcessRunner.Run("stat", ["-c", "%i", path]).EnsureSuccess().StandardOutput.Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }
}
