using Kit.HyperKit.HostFs;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.Testing;

// The 9P client calls below are bounded by the in-process server; the token is passed where it matters.
#pragma warning disable xUnit1051

namespace Kit.HyperKit.Tests;

/// <summary>
/// A hostile guest against the host-directory server (docs/security.md, "Host shares"): no set-id files or guest
/// ownership on an untrusted share, no device node or FIFO ever opened, and no fid acting on a name that has since
/// come to mean another file.
/// </summary>
public sealed class HostFsSecurityTests : IAsyncLifetime
{
    private const uint SIsUid = 0x800, SIsGid = 0x400; // S_ISUID 04000, S_ISGID 02000
    private const uint ESTALE = 116;
    private readonly DirectoryInfo _top = Directory.CreateTempSubdirectory("kit-hostfs-sec-");
    private string Root => _top.FullName;
    private HostFsTcpServer _server = null!;
    private HostFsTcpServer _trusted = null!;
    private NinePClient _c = null!;

    public async ValueTask InitializeAsync()
    {
        _server = new HostFsTcpServer(new HostFsOptions(Root));
        _trusted = new HostFsTcpServer(new HostFsOptions(Root) { Trusted = true });
        _c = await _server.ConnectAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await _c.DisposeAsync();
        await _server.DisposeAsync();
        await _trusted.DisposeAsync();
        _top.Delete(recursive: true);
    }

    private Task<Fcall> Rpc(Fcall t) => _c.RpcAsync(t, TestContext.Current.CancellationToken);

    private static async Task<uint> Errno(Func<Task> action) => (await Assert.ThrowsAsync<NinePException>(action)).Errno;

    private static uint HostMode(string path) => Convert.ToUInt32(Stat("%a", path), 8);

    private static string Stat(string format, string path) =>
        ProcessRunner.Run("stat", ["-c", format, path]).EnsureSuccess().StandardOutput.Trim();

    private static async Task MakeSetIdNodesAsync(NinePClient c, string prefix)
    {
        uint root = await c.WalkAsync("");
        uint file = await c.WalkAsync("");
        // 06755: set-uid and set-gid asked for on create, mkdir, mknod and chmod.
        await c.RpcAsync(new Fcall { Type = MessageType.Tlcreate, Fid = file, Name = prefix + "file", Flags = P9.LORdwr, LMode = 0xDED, Gid = 1234 });
        await c.RpcAsync(new Fcall { Type = MessageType.Tmkdir, DFid = root, Name = prefix + "dir", LMode = 0xDED, Gid = 1234 });
        await c.RpcAsync(new Fcall { Type = MessageType.Tmknod, DFid = root, Name = prefix + "node", LMode = HostCalls.S_IFREG | 0xDED, Gid = 1234 });
        await c.RpcAsync(new Fcall { Type = MessageType.Tmknod, DFid = root, Name = prefix + "chmod", LMode = HostCalls.S_IFREG | 0x1A4 });
        uint chmod = await c.WalkAsync(prefix + "chmod");
        // chown to a uid and gid nobody on the host asked for, then chmod (a chown clears set-id bits: chown(2)).
        await c.RpcAsync(new Fcall { Type = MessageType.Tsetattr, Fid = chmod, SetAttr = new LSetAttr { Valid = P9.AttrUid | P9.AttrGid, Uid = 4321, Gid = 4321 } });
        await c.RpcAsync(new Fcall { Type = MessageType.Tsetattr, Fid = chmod, SetAttr = new LSetAttr { Valid = P9.AttrMode, Mode = 0xDED } });
        foreach (uint fid in new[] { root, file, chmod })
        {
            await c.ClunkAsync(fid);
        }
    }

    [Fact]
    public async Task An_untrusted_share_strips_set_id_bits_and_keeps_host_ownership()
    {
        await MakeSetIdNodesAsync(_c, "u-");
        string owner = Stat("%u:%g", Root); // the temporary directory is the test process's own
        foreach (string name in new[] { "u-file", "u-dir", "u-node", "u-chmod" })
        {
            string path = Path.Combine(Root, name);
            Assert.True((HostMode(path) & (SIsUid | SIsGid)) == 0, $"{name}: mode {Stat("%a", path)} keeps a set-id bit");
            Assert.Equal(0x1C0u, HostMode(path) & 0x1C0); // the permission bits themselves are kept (owner rwx)
        }
        // The chown succeeded for the guest but left the host owner (the user kit runs as); getattr says so.
        string chmodPath = Path.Combine(Root, "u-chmod");
        Assert.Equal(owner, Stat("%u:%g", chmodPath));
        uint fid = await _c.WalkAsync("u-chmod");
        Fcall attr = await Rpc(new Fcall { Type = MessageType.Tgetattr, Fid = fid, RequestMask = P9.GetattrBasic });
        Assert.Equal(owner, $"{attr.Attr!.Uid}:{attr.Attr.Gid}");
        Assert.Equal(0u, attr.Attr.Mode & (SIsUid | SIsGid));
    }

    [Fact]
    public async Task A_trusted_share_applies_set_id_bits_and_guest_ownership()
    {
        Assert.SkipUnless(Environment.IsPrivilegedProcess, "chown to another user needs root (./test runs as root)");
        await using NinePClient c = await _trusted.ConnectAsync();
        await MakeSetIdNodesAsync(c, "t-");
        // (mkdir(2) itself ignores S_ISUID and takes S_ISGID from the parent, so the directory is not checked.)
        foreach (string name in new[] { "t-file", "t-node", "t-chmod" })
        {
            Assert.Equal(SIsUid | SIsGid, HostMode(Path.Combine(Root, name)) & (SIsUid | SIsGid));
        }
        Assert.Equal("4321:4321", Stat("%u:%g", Path.Combine(Root, "t-chmod")));
    }

    [Fact]
    public async Task Creating_over_a_device_node_or_fifo_never_opens_it()
    {
        Assert.SkipUnless(Environment.IsPrivilegedProcess, "mknod of a character device needs root (./test runs as root)");
        ProcessRunner.Run("mknod", [Path.Combine(Root, "zero"), "c", "1", "5"]).EnsureSuccess();
        ProcessRunner.Run("mkfifo", [Path.Combine(Root, "fifo")]).EnsureSuccess();
        foreach (string name in new[] { "zero", "fifo" })
        {
            foreach (uint flags in new[] { P9.LORdwr, 0u, P9.LORdwr | P9.LOTrunc })
            {
                uint dir = await _c.WalkAsync("");
                Assert.Equal(Kit.NineP.Protocol.Errno.EPERM, await Errno(() => Rpc(new Fcall { Type = MessageType.Tlcreate, Fid = dir, Name = name, Flags = flags, LMode = 0x1A4 })));
                await _c.ClunkAsync(dir);
                uint node = await _c.WalkAsync(name);
                Assert.Equal(Kit.NineP.Protocol.Errno.EPERM, await Errno(() => Rpc(new Fcall { Type = MessageType.Tlopen, Fid = node, Flags = flags })));
                await _c.ClunkAsync(node);
            }
        }
        // O_EXCL on an existing name is EEXIST, device or not (open(2)).
        uint d = await _c.WalkAsync("");
        Assert.Equal(Kit.NineP.Protocol.Errno.EEXIST, await Errno(() => Rpc(new Fcall { Type = MessageType.Tlcreate, Fid = d, Name = "zero", Flags = P9.LORdwr | 0x80, LMode = 0x1A4 })));
        Assert.Equal("character special file", Stat("%F", Path.Combine(Root, "zero")));

        // An existing regular file is still opened (and truncated when asked): open(2) with O_CREAT and no O_EXCL.
        File.WriteAllText(Path.Combine(Root, "plain"), "old contents");
        uint p = await _c.WalkAsync("");
        await Rpc(new Fcall { Type = MessageType.Tlcreate, Fid = p, Name = "plain", Flags = P9.LORdwr | P9.LOTrunc, LMode = 0x1A4 });
        Assert.Equal(3, await _c.WriteAsync(p, 0, "new"u8.ToArray()));
        Assert.Equal("new", File.ReadAllText(Path.Combine(Root, "plain")));
    }

    [Fact]
    public async Task Tremove_after_a_host_rename_never_removes_the_new_file_of_the_old_name()
    {
        string victim = Path.Combine(Root, "victim");
        File.WriteAllText(victim, "first");
        uint fid = await _c.WalkAsync("victim");
        uint fid2 = await _c.WalkAsync("victim");
        File.Move(victim, Path.Combine(Root, "moved"));
        File.WriteAllText(victim, "second");

        // The name now means another file: the fid fails cleanly (ESTALE) and touches nothing.
        Assert.Equal(ESTALE, await Errno(() => Rpc(new Fcall { Type = MessageType.Tremove, Fid = fid })));
        Assert.Equal("second", File.ReadAllText(victim));
        Assert.Equal("first", File.ReadAllText(Path.Combine(Root, "moved")));
        uint root = await _c.WalkAsync("");
        Assert.Equal(ESTALE, await Errno(() => Rpc(new Fcall { Type = MessageType.Trename, Fid = fid2, DFid = root, Name = "renamed" })));
        Assert.Equal("second", File.ReadAllText(victim));
        Assert.False(File.Exists(Path.Combine(Root, "renamed")));
    }

    [Fact]
    public async Task Tremove_after_a_rename_through_the_share_removes_the_renamed_file()
    {
        string victim = Path.Combine(Root, "victim");
        File.WriteAllText(victim, "first");
        Directory.CreateDirectory(Path.Combine(Root, "d"));
        File.WriteAllText(Path.Combine(Root, "d", "f"), "in d");
        uint fid = await _c.WalkAsync("victim");
        uint inD = await _c.WalkAsync("d/f");
        uint root = await _c.WalkAsync("");
        await Rpc(new Fcall { Type = MessageType.Trenameat, Fid = root, Name = "victim", DFid = root, Name2 = "moved" });
        File.WriteAllText(victim, "second");
        // The server renamed it, so it knows the fid's file is now "moved".
        await Rpc(new Fcall { Type = MessageType.Tremove, Fid = fid });
        Assert.False(File.Exists(Path.Combine(Root, "moved")));
        Assert.Equal("second", File.ReadAllText(victim));

        // The fid's directory moved on the host and a new d/f appeared: the fid still means d2/f, and removes that.
        Directory.Move(Path.Combine(Root, "d"), Path.Combine(Root, "d2"));
        Directory.CreateDirectory(Path.Combine(Root, "d"));
        File.WriteAllText(Path.Combine(Root, "d", "f"), "new d");
        await Rpc(new Fcall { Type = MessageType.Tremove, Fid = inD });
        Assert.False(File.Exists(Path.Combine(Root, "d2", "f")));
        Assert.Equal("new d", File.ReadAllText(Path.Combine(Root, "d", "f")));
    }

    [Fact]
    public async Task Dot_dot_after_the_directory_moved_reaches_its_new_parent_and_never_leaves_the_export()
    {
        Directory.CreateDirectory(Path.Combine(Root, "a", "inner"));
        Directory.CreateDirectory(Path.Combine(Root, "b"));
        File.WriteAllText(Path.Combine(Root, "b", "marker"), "in b");
        uint inner = await _c.WalkAsync("a/inner");
        Directory.Move(Path.Combine(Root, "a", "inner"), Path.Combine(Root, "b", "inner"));
        Fcall up = await Rpc(new Fcall { Type = MessageType.Twalk, Fid = inner, NewFid = 500, Wnames = ["..", "marker"] });
        Assert.Equal(2, up.Wqids.Length);
        await Rpc(new Fcall { Type = MessageType.Tlopen, Fid = 500, Flags = 0 });
        Assert.Equal("in b"u8.ToArray(), await _c.ReadAsync(500, 0, 100));

        // A directory moved out of the export (by the host) has no ".." the guest can reach.
        DirectoryInfo outside = Directory.CreateTempSubdirectory("kit-hostfs-out-");
        try
        {
            Directory.CreateDirectory(Path.Combine(Root, "b", "inner", "deep"));
            uint deep = await _c.WalkAsync("b/inner/deep");
            Directory.Move(Path.Combine(Root, "b", "inner"), Path.Combine(outside.FullName, "inner"));
            Assert.Equal(Kit.NineP.Protocol.Errno.ENOENT, await Errno(() => Rpc(new Fcall { Type = MessageType.Twalk, Fid = deep, NewFid = 501, Wnames = ["..", ".."] })));
        }
        finally
        {
            outside.Delete(recursive: true);
        }
        // ".." at the root stays at the root.
        Fcall top = await Rpc(new Fcall { Type = MessageType.Twalk, Fid = _c.RootFid, NewFid = 502, Wnames = ["..", "..", "b", "marker"] });
        Assert.Equal(4, top.Wqids.Length);
    }

    [Fact]
    public void One_session_holds_a_bounded_number_of_host_descriptors()
    {
        File.WriteAllText(Path.Combine(Root, "f"), "x");
        using var session = new HostFsSession(new HostFsOptions(Root));
        byte[] reply = new byte[70000];
        byte[] frame = new byte[512];
        Fcall Call(Fcall t)
        {
            int n = FcallCodec.Encode(t, Dialect.Linux, frame);
            int r = session.Handle(frame.AsMemory(0, n), reply);
            Assert.True(FcallCodec.TryDecode(reply.AsSpan(0, r), Dialect.Linux, out Fcall answer, out string why), why);
            return answer;
        }
        Assert.Equal(MessageType.Rversion, Call(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 65536, Version = P9.VersionL }).Type);
        Assert.Equal(MessageType.Rattach, Call(new Fcall { Type = MessageType.Tattach, Fid = 0, Afid = P9.NoFid, Uname = "root", Aname = "" }).Type);
        int before = Directory.GetFiles("/proc/self/fd").Length;
        int ok = 0, emfile = 0;
        for (uint fid = 1; fid <= 3000; fid++)
        {
            Fcall w = Call(new Fcall { Type = MessageType.Twalk, Fid = 0, NewFid = fid, Wnames = ["f"] });
            Fcall o = w.Type == MessageType.Rwalk ? Call(new Fcall { Type = MessageType.Tlopen, Fid = fid, Flags = 0 }) : w;
            if (o.Type == MessageType.Rlopen)
            {
                ok++;
            }
            else
            {
                Assert.Equal(Kit.NineP.Protocol.Errno.EMFILE, o.Errno);
                emfile++;
            }
        }
        int grown = Directory.GetFiles("/proc/self/fd").Length - before;
        Assert.True(emfile > 0, "no request was refused with EMFILE");
        Assert.Equal(HostFsOptions.DefaultMaxDescriptors, session.DescriptorCount);
        // Other tests run beside this one in the process, hence the slack; unbounded, 3000 fids held 6000 descriptors.
        Assert.True(grown <= HostFsOptions.DefaultMaxDescriptors + 100, $"the process holds {grown} more descriptors");
        Assert.True(ok >= 400, $"only {ok} files opened");
        // Clunking gives descriptors back, and the next request succeeds.
        Assert.Equal(MessageType.Rclunk, Call(new Fcall { Type = MessageType.Tclunk, Fid = 1 }).Type);
        Assert.Equal(MessageType.Rclunk, Call(new Fcall { Type = MessageType.Tclunk, Fid = 2 }).Type);
        Assert.Equal(MessageType.Rwalk, Call(new Fcall { Type = MessageType.Twalk, Fid = 0, NewFid = 1, Wnames = ["f"] }).Type);
        Assert.Equal(MessageType.Rlopen, Call(new Fcall { Type = MessageType.Tlopen, Fid = 1, Flags = 0 }).Type);
    }
}
