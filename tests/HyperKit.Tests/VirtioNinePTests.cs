using System.Buffers;
using System.Buffers.Binary;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.NineP;
using Kit.HyperKit.HostFs;
using Kit.HyperKit.Memory;
using Kit.NineP.Protocol;

namespace Kit.HyperKit.Tests;

/// <summary>A backend the test answers by hand, in any order.</summary>
internal sealed class ScriptedChannel : NinePChannel
{
    public List<byte[]> Sent { get; } = [];
    public INinePReplySink? Sink { get; private set; }
    public bool Disposed { get; private set; }

    public override void Start(INinePReplySink sink) => Sink = sink;

    public override bool TrySend(byte[] rented, int length)
    {
        Sent.Add(rented.AsSpan(0, length).ToArray());
        ArrayPool<byte>.Shared.Return(rented);
        return true;
    }

    public override void Dispose() => Disposed = true;
}

/// <summary>virtio-9p driven by a scripted guest driver over fake guest memory (no KVM).</summary>
public sealed class VirtioNinePTests : IDisposable
{
    private const ulong Requests = 0x10000, Replies = 0x30000;
    private const uint Slot = 0x1000;
    private readonly GuestMemory _memory = new(0x80000);
    private readonly SplitQueue _queue;
    private readonly QueueDriver _driver;
    private readonly List<ScriptedChannel> _channels = [];
    private readonly Lock _transport = new();
    private int _next;

    public VirtioNinePTests()
    {
        _queue = new SplitQueue(_memory, 16);
        _driver = new QueueDriver(_memory, 16);
        _driver.Configure(_queue);
    }

    public void Dispose() => _memory.Dispose();

    /// <summary>A device whose host-side completions run Process under a lock, as the PCI transport does.</summary>
    private VirtioNineP Device(NinePChannelFactory? factory = null)
    {
        VirtioNineP device = null!;
        device = new VirtioNineP("share", factory ?? (() =>
        {
            var c = new ScriptedChannel();
            _channels.Add(c);
            return c;
        }));
        device.ProcessQueue = _ =>
        {
            lock (_transport)
            {
                device.Process(0, _queue, _memory);
            }
        };
        return device;
    }

    private void Kick(VirtioNineP device)
    {
        lock (_transport)
        {
            device.Process(0, _queue, _memory);
        }
    }

    /// <summary>Posts one request chain (T-message readable, <paramref name="writable"/> bytes writable); returns its slot.</summary>
    private int Post(ReadOnlySpan<byte> message, uint writable = 256, int readableOverride = -1)
    {
        int slot = _next++;
        ulong req = Requests + (ulong)slot * Slot;
        ulong rep = Replies + (ulong)slot * Slot;
        _memory.TryWrite(req, message);
        _memory.GetSpan(rep, (int)Slot).Fill(0xEE);
        _driver.Post((req, readableOverride >= 0 ? (uint)readableOverride : (uint)message.Length, false), (rep, writable, true));
        return slot;
    }

    private byte[] ReplyIn(int slot, int length) => _memory.GetSpan(Replies + (ulong)slot * Slot, length).ToArray();

    private static byte[] Encode(Fcall f, Dialect dialect = Dialect.Linux)
    {
        byte[] b = new byte[8192];
        int n = FcallCodec.Encode(f, dialect, b);
        return b.AsSpan(0, n).ToArray();
    }

    private static byte[] Getattr(ushort tag) => Encode(new Fcall { Type = MessageType.Tgetattr, Tag = tag, Fid = 1, RequestMask = P9.GetattrBasic });

    private static byte[] Rclunk(ushort tag) => Encode(new Fcall { Type = MessageType.Rclunk, Tag = tag });

    private static (MessageType Type, ushort Tag, uint Errno) Parse(byte[] reply) =>
        ((MessageType)reply[4], BinaryPrimitives.ReadUInt16LittleEndian(reply.AsSpan(5)), BinaryPrimitives.ReadUInt32LittleEndian(reply.AsSpan(7)));

    [Fact]
    public void Config_carries_the_mount_tag_and_the_feature()
    {
        VirtioNineP device = Device();
        Assert.Equal(9, device.DeviceType);
        Assert.NotEqual(0UL, device.DeviceFeatures & VirtioNineP.FeatureMountTag);
        Span<byte> config = stackalloc byte[8];
        device.ReadConfig(0, config);
        Assert.Equal(5, BinaryPrimitives.ReadUInt16LittleEndian(config));
        Assert.Equal("share"u8.ToArray(), config[2..7].ToArray());
        Assert.Equal(0, config[7]);
        Assert.Throws<ArgumentException>(() => new VirtioNineP(new string('x', 256), () => new ScriptedChannel()));
    }

    [Fact]
    public void Replies_complete_their_own_chains_in_any_order()
    {
        VirtioNineP device = Device();
        int a = Post(Getattr(1));
        int b = Post(Getattr(2));
        int c = Post(Getattr(3));
        Kick(device);
        ScriptedChannel channel = Assert.Single(_channels);
        Assert.Equal(3, channel.Sent.Count);
        Assert.Equal(Getattr(2), channel.Sent[1]);
        Assert.Equal(0, _driver.UsedIdx);

        channel.Sink!.OnReply(Rclunk(3));
        channel.Sink.OnReply(Rclunk(1));
        Assert.Equal(2, _driver.UsedIdx);
        channel.Sink.OnReply(Rclunk(2));
        Assert.Equal(3, _driver.UsedIdx);
        // Used ring order is reply order; each chain holds the reply with its own tag.
        Assert.Equal(((uint)(c * 2), 7u), _driver.UsedEntry(0));
        Assert.Equal(((uint)(a * 2), 7u), _driver.UsedEntry(1));
        Assert.Equal(((uint)(b * 2), 7u), _driver.UsedEntry(2));
        Assert.Equal(Rclunk(3), ReplyIn(c, 7));
        Assert.Equal(Rclunk(1), ReplyIn(a, 7));
        Assert.Equal(0, device.InFlight);

        // A reply nobody asked for is dropped and counted.
        channel.Sink.OnReply(Rclunk(9));
        Assert.Equal(1, device.StrayReplies);
        Assert.Equal(3, _driver.UsedIdx);
    }

    [Fact]
    public void Malformed_requests_are_answered_here_and_never_forwarded()
    {
        VirtioNineP device = Device();
        byte[] lying = Getattr(4);
        BinaryPrimitives.WriteUInt32LittleEndian(lying, 5000);       // size larger than the chain's readable part
        int s1 = Post(lying);
        byte[] tiny = Getattr(5);
        BinaryPrimitives.WriteUInt32LittleEndian(tiny, 3);           // size smaller than a header
        int s2 = Post(tiny);
        int s3 = Post(Getattr(6).AsSpan(0, 5));                       // not even a header
        byte[] truncated = Encode(new Fcall { Type = MessageType.Twalk, Tag = 7, Fid = 1, NewFid = 2, Wnames = ["a", "b"] });
        BinaryPrimitives.WriteUInt32LittleEndian(truncated, (uint)truncated.Length - 3);
        int s4 = Post(truncated.AsSpan(0, truncated.Length - 3));    // consistent size, body cut short
        byte[] write = Encode(new Fcall { Type = MessageType.Twrite, Tag = 8, Fid = 1, Data = new byte[10] });
        BinaryPrimitives.WriteUInt32LittleEndian(write.AsSpan(19), 100_000); // count beyond the data
        int s5 = Post(write);
        int s6 = Post([7, 0, 0, 0, 250, 9, 0]);                      // unknown type
        int s7 = Post(Rclunk(10));                                    // an R-message from the guest
        Kick(device);

        Assert.Empty(_channels); // nothing was forwarded: no connection was even opened
        Assert.Equal(7, _driver.UsedIdx);
        Assert.Equal((MessageType.Rlerror, (ushort)4, Errno.EINVAL), Parse(ReplyIn(s1, 11)));
        Assert.Equal((MessageType.Rlerror, (ushort)5, Errno.EINVAL), Parse(ReplyIn(s2, 11)));
        Assert.Equal(0u, _driver.UsedEntry(2).Len);
        Assert.Equal(0xEE, ReplyIn(s3, 1)[0]);
        Assert.Equal((MessageType.Rlerror, (ushort)7, Errno.EINVAL), Parse(ReplyIn(s4, 11)));
        Assert.Equal((MessageType.Rlerror, (ushort)8, Errno.EINVAL), Parse(ReplyIn(s5, 11)));
        Assert.Equal((MessageType.Rlerror, (ushort)9, Errno.EOPNOTSUPP), Parse(ReplyIn(s6, 11)));
        Assert.Equal((MessageType.Rlerror, (ushort)10, Errno.EOPNOTSUPP), Parse(ReplyIn(s7, 11)));
        Assert.Equal(7, device.LocalErrors);

        // A duplicate tag in flight is refused, and a server reply larger than the chain becomes EIO.
        int d1 = Post(Getattr(11), writable: 16);
        int d2 = Post(Getattr(11));
        Kick(device);
        Assert.Equal((MessageType.Rlerror, (ushort)11, Errno.EINVAL), Parse(ReplyIn(d2, 11)));
        _channels[0].Sink!.OnReply(Encode(new Fcall { Type = MessageType.Rreadlink, Tag = 11, Name2 = new string('x', 100) }));
        Assert.Equal((MessageType.Rlerror, (ushort)11, Errno.EIO), Parse(ReplyIn(d1, 11)));
        Assert.Equal(0xEE, ReplyIn(d1, 12)[11]);
    }

    [Fact]
    public void Tversion_msize_is_clamped_to_what_the_relay_carries()
    {
        VirtioNineP device = Device();
        Post(Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 64 << 20, Version = P9.VersionL }));
        Kick(device);
        byte[] sent = Assert.Single(Assert.Single(_channels).Sent);
        Assert.Equal((uint)VirtioNineP.MaxMessage, BinaryPrimitives.ReadUInt32LittleEndian(sent.AsSpan(7)));
    }

    [Fact]
    public void Rflush_gives_the_flushed_chain_back_empty_first()
    {
        VirtioNineP device = Device();
        int read = Post(Encode(new Fcall { Type = MessageType.Tread, Tag = 5, Fid = 1, Count = 100 }));
        int flush = Post(Encode(new Fcall { Type = MessageType.Tflush, Tag = 6, OldTag = 5 }));
        Kick(device);
        _channels[0].Sink!.OnReply(Encode(new Fcall { Type = MessageType.Rflush, Tag = 6 }));
        Assert.Equal(2, _driver.UsedIdx);
        Assert.Equal(((uint)(read * 2), 0u), _driver.UsedEntry(0));
        Assert.Equal(((uint)(flush * 2), 7u), _driver.UsedEntry(1));
        Assert.Equal(0, device.InFlight);
    }

    [Fact]
    public void A_backend_that_disappears_fails_pending_and_new_requests_with_EIO_until_the_next_mount()
    {
        VirtioNineP device = Device();
        int a = Post(Getattr(1));
        int b = Post(Getattr(2));
        Kick(device);
        _channels[0].Sink!.OnClosed("gone");
        Assert.Equal(2, _driver.UsedIdx);
        Assert.Equal((MessageType.Rlerror, (ushort)1, Errno.EIO), Parse(ReplyIn(a, 11)));
        Assert.Equal((MessageType.Rlerror, (ushort)2, Errno.EIO), Parse(ReplyIn(b, 11)));
        Assert.Equal("gone", device.BackendClosedReason);

        int c = Post(Getattr(3));
        Kick(device);
        Assert.Equal((MessageType.Rlerror, (ushort)3, Errno.EIO), Parse(ReplyIn(c, 11)));
        Assert.Single(_channels);

        // A new Tversion (a new mount) opens a new connection; late replies of the old one are ignored.
        Post(Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 65536, Version = P9.VersionL }));
        Kick(device);
        Assert.Equal(2, _channels.Count);
        Assert.True(_channels[0].Disposed);
        _channels[0].Sink!.OnReply(Encode(new Fcall { Type = MessageType.Rversion, Tag = P9.NoTag, Msize = 65536, Version = P9.VersionL }));
        Assert.Equal(3, _driver.UsedIdx);
        _channels[1].Sink!.OnReply(Encode(new Fcall { Type = MessageType.Rversion, Tag = P9.NoTag, Msize = 65536, Version = P9.VersionL }));
        Assert.Equal(4, _driver.UsedIdx);
    }

    [Fact]
    public async Task A_real_socket_backend_closing_mid_request_leaves_the_device_answering_and_a_remount_reconnects()
    {
        // A server that reads one request and hangs up: the pending request gets EIO through the real stream channel.
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        Task server = Task.Run(async () =>
        {
            using System.Net.Sockets.TcpClient c = await listener.AcceptTcpClientAsync(cancel);
            byte[] buffer = new byte[64];
            await c.GetStream().ReadAtLeastAsync(buffer, 7, cancellationToken: cancel);
        }, cancel);
        VirtioNineP device = Device(() => StreamNinePChannel.ForAddress($"tcp://127.0.0.1:{port}", 1 << 20));
        int a = Post(Getattr(1));
        Kick(device);
        await server;
        WaitFor(() => _driver.UsedIdx == 1);
        Assert.Equal((MessageType.Rlerror, (ushort)1, Errno.EIO), Parse(ReplyIn(a, 11)));

        // The guest mounts again: its Tversion opens a new connection, which answers.
        Task second = Task.Run(async () =>
        {
            using System.Net.Sockets.TcpClient c = await listener.AcceptTcpClientAsync(cancel);
            byte[] buffer = new byte[64];
            int n = await c.GetStream().ReadAtLeastAsync(buffer, 7, cancellationToken: cancel);
            Assert.Equal((byte)MessageType.Tversion, buffer[4]);
            await c.GetStream().WriteAsync(Encode(new Fcall { Type = MessageType.Rversion, Tag = P9.NoTag, Msize = 8192, Version = P9.VersionL }), cancel);
            await c.GetStream().ReadAtLeastAsync(buffer, 1, throwOnEndOfStream: false, cancellationToken: cancel);
        }, cancel);
        int v = Post(Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 8192, Version = P9.VersionL }));
        Kick(device);
        WaitFor(() => _driver.UsedIdx == 2);
        Assert.Equal((byte)MessageType.Rversion, ReplyIn(v, 5)[4]);
        device.Dispose();
        await second;
    }

    [Theory]
    [InlineData(0xFFFFFFFFu)]
    [InlineData(3u)]
    public async Task A_server_sending_an_impossible_frame_size_is_dropped_and_requests_fail_with_EIO(uint size)
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        Task server = Task.Run(async () =>
        {
            using System.Net.Sockets.TcpClient c = await listener.AcceptTcpClientAsync(cancel);
            byte[] buffer = new byte[64];
            await c.GetStream().ReadAtLeastAsync(buffer, 7, cancellationToken: cancel);
            byte[] lie = new byte[11];
            BinaryPrimitives.WriteUInt32LittleEndian(lie, size);
            lie[4] = (byte)MessageType.Rgetattr;
            lie[5] = 1;
            await c.GetStream().WriteAsync(lie, cancel);
            await c.GetStream().ReadAtLeastAsync(buffer, 1, throwOnEndOfStream: false, cancellationToken: cancel);
        }, cancel);
        VirtioNineP device = Device(() => StreamNinePChannel.ForAddress($"tcp://127.0.0.1:{port}", 1 << 20));
        int a = Post(Getattr(1));
        Kick(device);
        WaitFor(() => _driver.UsedIdx == 1);
        Assert.Equal((MessageType.Rlerror, (ushort)1, Errno.EIO), Parse(ReplyIn(a, 11)));
        Assert.Contains("frame of", device.BackendClosedReason, StringComparison.Ordinal);
        await server;
        device.Dispose();
    }

    [Fact]
    public void The_built_in_server_writes_a_file_the_host_reads()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-9p-dev-");
        try
        {
            VirtioNineP device = Device(() => new HostFsNinePChannel(new HostFsOptions(dir.FullName)));
            WriteAFileThrough(device);
            Assert.Equal("written through virtio-9p", File.ReadAllText(Path.Combine(dir.FullName, "from-guest")));
            device.Reset();
            device.Dispose();
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Relays_to_a_9P_server_on_a_unix_socket()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-9p-unix-");
        string socketPath = Path.Combine(dir.FullName, "9p.sock");
        Directory.CreateDirectory(Path.Combine(dir.FullName, "export"));
        using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
        listener.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(socketPath));
        listener.Listen(1);
        Task server = Task.Run(async () =>
        {
            using System.Net.Sockets.Socket s = await listener.AcceptAsync(cancel);
            await using var stream = new System.Net.Sockets.NetworkStream(s);
            await HostFsServer.ServeStreamAsync(stream, new HostFsOptions(Path.Combine(dir.FullName, "export")), cancel);
        }, cancel);
        try
        {
            VirtioNineP device = Device(() => StreamNinePChannel.ForAddress($"unix:{socketPath}", 1 << 20));
            WriteAFileThrough(device);
            Assert.Equal("written through virtio-9p", File.ReadAllText(Path.Combine(dir.FullName, "export", "from-guest")));
            device.Dispose();
            await server;
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private void WriteAFileThrough(VirtioNineP device)
    {
        Fcall[] script =
        [
            new() { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 8192, Version = P9.VersionL },
            new() { Type = MessageType.Tattach, Tag = 1, Fid = 1, Afid = P9.NoFid, Uname = "root", Aname = "", NUname = 0 },
            new() { Type = MessageType.Twalk, Tag = 2, Fid = 1, NewFid = 2, Wnames = [] },
            new() { Type = MessageType.Tlcreate, Tag = 3, Fid = 2, Name = "from-guest", Flags = P9.LORdwr, LMode = 0x1A4 },
            new() { Type = MessageType.Twrite, Tag = 4, Fid = 2, Offset = 0, Data = "written through virtio-9p"u8.ToArray() },
            new() { Type = MessageType.Tclunk, Tag = 5, Fid = 2 },
        ];
        foreach (Fcall t in script)
        {
            int slot = Post(Encode(t));
            int expected = _driver.UsedIdx + 1;
            Kick(device);
            WaitFor(() => _driver.UsedIdx == expected);
            Assert.Equal((byte)(t.Type + 1), ReplyIn(slot, 5)[4]);
        }
    }

    private static void WaitFor(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the device did not complete the request");
            Thread.Sleep(5);
        }
    }
}
