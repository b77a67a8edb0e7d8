using System.Buffers.Binary;
using System.Net.Sockets;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Devices.Virtio.Vsock;
using Kit.HyperKit.VhostUser;
using Kit.Linux;

namespace Kit.HyperKit.Tests;

/// <summary>
/// The vhost-user backend against a frontend the test plays itself (<see cref="VhostUserTestFrontend"/>): a whole
/// virtio-net frame round trip through guest memory in two regions, then hostile frontends. Each hostile case
/// checks that the backend dropped (only) that connection and that a second frontend then works end to end.
/// </summary>
public sealed class VhostUserBackendTests : IDisposable
{
    private const ushort QueueSize = 8;
    private const ulong RxRing = 0x1000, TxRing = 0x100000; // one ring in each region
    private const ulong RxBuffer = 0x10000, TxBuffer = 0x120000;
    private const ushort DescWrite = 2, DescNext = 1;
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(5);
    private static readonly ulong NetFeatures = VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf | VirtioFeatures.EventIdx | VhostUserSession.ProtocolFeaturesBit;

    private readonly FakeNetBackend _net = new(offload: false);
    private readonly VirtioNet _device;
    private readonly VhostUserBackend _backend;

    public VhostUserBackendTests()
    {
        _device = new VirtioNet(_net, [0x02, 0, 0, 0, 0, 1]);
        _backend = new VhostUserBackend(_device);
    }

    public void Dispose()
    {
        _backend.Dispose();
        _device.Dispose();
    }

    private VhostUserTestFrontend Connect(out Task disconnected)
    {
        disconnected = _backend.Disconnected;
        (Socket ours, Socket theirs) = VhostUserTestFrontend.Pair();
        _backend.Serve(ours);
        return new VhostUserTestFrontend(theirs);
    }

    private static byte[] Frame(byte fill)
    {
        byte[] f = new byte[60];
        f.AsSpan().Fill(fill);
        f[0] = 0x02; // unicast destination
        return f;
    }

    /// <summary>A whole frontend session: handshake, both rings, one frame each way, then hang up.</summary>
    private void RoundTrip(byte fill)
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        fe.Handshake(NetFeatures);
        (int rxKick, int rxCall) = fe.StartRing(VirtioNet.RxQueue, QueueSize, RxRing);
        (int txKick, int txCall) = fe.StartRing(VirtioNet.TxQueue, QueueSize, TxRing);
        using var handles = new FdBag(rxKick, rxCall, txKick, txCall);

        // Guest to host: [virtio_net_hdr_v1 (12 zero bytes)][frame] in a buffer of the second region.
        byte[] tx = Frame(fill);
        fe.Gpa(TxBuffer, 12).Clear();
        tx.CopyTo(fe.Gpa(TxBuffer + 12, tx.Length));
        fe.WriteDescriptor(TxRing, 0, TxBuffer, (uint)(12 + tx.Length), 0, 0);
        fe.MakeAvailable(TxRing, QueueSize, 0);
        VhostUserTestFrontend.Signal(txKick);
        Assert.True(fe.WaitUsed(TxRing, QueueSize, 1), "the transmit chain was never used");
        List<byte[]> sent = _net.Drain();
        Assert.Single(sent);
        Assert.Equal(tx, sent[0][VirtioNetHeader.Size..]);

        // Host to guest: one writable buffer, then a frame from the backend side.
        fe.WriteDescriptor(RxRing, 0, RxBuffer, 2048, DescWrite, 0);
        fe.MakeAvailable(RxRing, QueueSize, 0);
        VhostUserTestFrontend.Signal(rxKick);
        byte[] rx = Frame((byte)(fill + 1));
        Assert.True(_net.Port!.Deliver(rx));
        Assert.True(fe.WaitUsed(RxRing, QueueSize, 1), "the receive buffer was never used");
        Assert.Equal((0u, (uint)(12 + rx.Length)), fe.UsedEntry(RxRing, QueueSize, 0));
        Assert.Equal(rx, fe.Gpa(RxBuffer + 12, rx.Length).ToArray());
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(fe.Gpa(RxBuffer + 10, 2))); // num_buffers
        Assert.True(WaitSignalled(rxCall), "no call eventfd for the used receive buffer");

        fe.Close();
        Assert.True(Ended(gone), "the backend did not notice the hang-up");
    }

    private static bool Ended(Task task) => task.Wait(Bounded, TestContext.Current.CancellationToken);

    private static bool WaitSignalled(int eventFd)
    {
        long deadline = Environment.TickCount64 + 5000;
        while (Environment.TickCount64 < deadline)
        {
            if (Sys.ReadEventFd(eventFd) != 0)
            {
                return true;
            }
            Thread.Sleep(5);
        }
        return false;
    }

    private sealed class FdBag(params int[] fds) : IDisposable
    {
        public void Dispose() => Sys.CloseAll(fds);
    }

    private void AssertDroppedThenServesNext(Task gone, string reasonPart)
    {
        Assert.True(Ended(gone), "the backend kept a connection that broke the protocol");
        Assert.NotNull(_backend.LastError);
        Assert.Contains(reasonPart, _backend.LastError, StringComparison.Ordinal);
        RoundTrip(0x40);
    }

    [Fact]
    public void Features_offer_the_devices_bits_version_1_event_idx_and_protocol_features_but_no_config_for_net()
    {
        using VhostUserTestFrontend fe = Connect(out _);
        ulong features = fe.Request64(VhostUserRequest.GetFeatures);
        Assert.Equal(_device.DeviceFeatures | VirtioFeatures.Version1 | VirtioFeatures.EventIdx | (1UL << 30), features);
        ulong protocol = fe.Request64(VhostUserRequest.GetProtocolFeatures);
        Assert.NotEqual(0UL, protocol & VhostUserProtocolFeatures.ReplyAck);
        // QEMU's virtio-net owns its configuration space and warns when a net backend offers CONFIG.
        Assert.Equal(0UL, protocol & VhostUserProtocolFeatures.Config);
        Assert.Equal(0UL, protocol & VhostUserProtocolFeatures.Mq);
    }

    [Fact]
    public void A_frame_crosses_each_way_and_a_second_frontend_does_the_same_after_the_first_hangs_up()
    {
        RoundTrip(0x10);
        RoundTrip(0x20);
        Assert.Equal(2, _backend.SessionsServed);
        Assert.Null(_backend.LastError);
    }

    [Fact]
    public void A_short_header_then_hang_up_ends_only_that_session()
    {
        VhostUserTestFrontend fe = Connect(out Task gone);
        Assert.True(fe.SendRaw([1, 0, 0]));
        fe.Dispose();
        Assert.True(Ended(gone));
        RoundTrip(0x40);
    }

    [Fact]
    public void A_payload_beyond_the_maximum_is_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        byte[] header = new byte[VhostUserHeader.Length];
        new VhostUserHeader(VhostUserRequest.SetMemTable, VhostUserFlags.Version, 1 << 20).Write(header);
        Assert.True(fe.SendRaw(header));
        AssertDroppedThenServesNext(gone, "PayloadTooLarge");
    }

    [Fact]
    public void A_bad_version_is_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        byte[] header = new byte[VhostUserHeader.Length];
        new VhostUserHeader(VhostUserRequest.GetFeatures, 2, 0).Write(header);
        Assert.True(fe.SendRaw(header));
        AssertDroppedThenServesNext(gone, "BadVersion");
    }

    [Fact]
    public void An_unknown_request_with_need_reply_fails_and_the_session_goes_on_without_it_the_session_ends()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        Assert.Equal(1UL, fe.Acked((VhostUserRequest)99, [1, 2, 3]));
        Assert.NotEqual(0UL, fe.Request64(VhostUserRequest.GetFeatures)); // still served
        Assert.True(fe.Send((VhostUserRequest)99, []));
        AssertDroppedThenServesNext(gone, "unsupported request 99");
    }

    [Fact]
    public void Overlapping_regions_are_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        VhostMemoryRegion[] overlapping = [new(0, 0x40000, 0x1000_0000, 0), new(0x20000, 0x40000, 0x2000_0000, 0x40000)];
        ulong? ack = fe.Acked(VhostUserRequest.SetMemTable, VhostUserTestFrontend.Table(overlapping), [fe.MemFd, fe.MemFd]);
        Assert.NotEqual(0UL, ack ?? 1);
        AssertDroppedThenServesNext(gone, "overlap");
    }

    [Fact]
    public void A_descriptor_that_is_not_a_big_enough_file_is_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        Assert.True(Sys.CreateSocketPair(out int a, out int b)); // a socket: lseek fails
        using var bag = new FdBag(a, b);
        ulong? ack = fe.Acked(VhostUserRequest.SetMemTable, VhostUserTestFrontend.Table([new(0, 0x1000, 0x1000_0000, 0)]), [a]);
        Assert.NotEqual(0UL, ack ?? 1);
        AssertDroppedThenServesNext(gone, "not a file");
    }

    [Fact]
    public void A_region_larger_than_its_file_is_refused_rather_than_risking_sigbus()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        ulong? ack = fe.Acked(VhostUserRequest.SetMemTable,
            VhostUserTestFrontend.Table([new(0, VhostUserTestFrontend.FileSize * 2, 0x1000_0000, 0)]), [fe.MemFd]);
        Assert.NotEqual(0UL, ack ?? 1);
        AssertDroppedThenServesNext(gone, "not a file");
    }

    [Fact]
    public void A_zero_size_region_is_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        ulong? ack = fe.Acked(VhostUserRequest.SetMemTable, VhostUserTestFrontend.Table([new(0, 0, 0x1000_0000, 0)]), [fe.MemFd]);
        Assert.NotEqual(0UL, ack ?? 1);
        AssertDroppedThenServesNext(gone, "empty");
    }

    [Fact]
    public void Too_many_regions_are_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        var regions = new VhostMemoryRegion[9];
        int[] fds = new int[8];
        for (int i = 0; i < regions.Length; i++)
        {
            regions[i] = new((ulong)i << 20, 0x1000, 0x1000_0000 + ((ulong)i << 20), 0);
        }
        fds.AsSpan().Fill(fe.MemFd);
        ulong? ack = fe.Acked(VhostUserRequest.SetMemTable, VhostUserTestFrontend.Table(regions), fds);
        Assert.NotEqual(0UL, ack ?? 1);
        AssertDroppedThenServesNext(gone, "TooManyRegions");
    }

    [Fact]
    public void Fewer_descriptors_than_regions_are_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        ulong? ack = fe.Acked(VhostUserRequest.SetMemTable, VhostUserTestFrontend.Table(VhostUserTestFrontend.Regions), [fe.MemFd]);
        Assert.NotEqual(0UL, ack ?? 1);
        AssertDroppedThenServesNext(gone, "descriptors");
    }

    [Fact]
    public void A_ring_address_outside_the_memory_table_is_refused()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        fe.Handshake(NetFeatures);
        Assert.Equal(0UL, fe.Acked(VhostUserRequest.SetVringNum, VhostUserTestFrontend.State(0, QueueSize)));
        byte[] addr = new byte[VringAddress.Length];
        new VringAddress(0, 0, 0xdead_0000_0000, VhostUserTestFrontend.UserBase, VhostUserTestFrontend.UserBase, 0).Write(addr);
        Assert.NotEqual(0UL, fe.Acked(VhostUserRequest.SetVringAddr, addr) ?? 1);
        AssertDroppedThenServesNext(gone, "outside the memory table");
    }

    [Fact]
    public void A_ring_that_straddles_two_regions_is_refused_when_started()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        fe.Handshake(NetFeatures);
        Assert.Equal(0UL, fe.Acked(VhostUserRequest.SetVringNum, VhostUserTestFrontend.State(0, QueueSize)));
        // The descriptor table starts 64 bytes before the end of the first region: its start translates, its end does not.
        ulong start = VhostUserTestFrontend.UserBase + 0x40000 - 64;
        byte[] addr = new byte[VringAddress.Length];
        new VringAddress(0, 0, start, VhostUserTestFrontend.UserBase, VhostUserTestFrontend.UserBase + 0x200, 0).Write(addr);
        Assert.Equal(0UL, fe.Acked(VhostUserRequest.SetVringAddr, addr));
        int kick = Sys.EventFd(0, Sys.EFD_CLOEXEC);
        using var bag = new FdBag(kick);
        Assert.NotEqual(0UL, fe.Acked(VhostUserRequest.SetVringKick, VhostUserTestFrontend.U64(0), [kick]) ?? 1);
        AssertDroppedThenServesNext(gone, "do not fit in one memory region");
    }

    [Fact]
    public void A_descriptor_loop_is_returned_empty_and_the_ring_goes_on()
    {
        using VhostUserTestFrontend fe = Connect(out Task gone);
        fe.Handshake(NetFeatures);
        (int txKick, int txCall) = fe.StartRing(VirtioNet.TxQueue, QueueSize, TxRing);
        using var bag = new FdBag(txKick, txCall);
        fe.WriteDescriptor(TxRing, 0, TxBuffer, 36, DescNext, 1);
        fe.WriteDescriptor(TxRing, 1, TxBuffer + 36, 36, DescNext, 0); // ... and back to 0
        fe.MakeAvailable(TxRing, QueueSize, 0);
        VhostUserTestFrontend.Signal(txKick);
        Assert.True(fe.WaitUsed(TxRing, QueueSize, 1), "the looping chain was not returned");
        Assert.Equal((0u, 0u), fe.UsedEntry(TxRing, QueueSize, 0));
        Assert.Empty(_net.Drain());
        // A good frame on the same ring still goes through.
        byte[] tx = Frame(0x33);
        fe.Gpa(TxBuffer, 12).Clear();
        tx.CopyTo(fe.Gpa(TxBuffer + 12, tx.Length));
        fe.WriteDescriptor(TxRing, 2, TxBuffer, (uint)(12 + tx.Length), 0, 0);
        fe.MakeAvailable(TxRing, QueueSize, 2);
        VhostUserTestFrontend.Signal(txKick);
        Assert.True(fe.WaitUsed(TxRing, QueueSize, 2));
        Assert.Single(_net.Drain());
        Assert.False(gone.IsCompleted);
    }

    [Fact]
    public void A_buffer_outside_guest_memory_is_returned_empty()
    {
        using VhostUserTestFrontend fe = Connect(out _);
        fe.Handshake(NetFeatures);
        (int txKick, int txCall) = fe.StartRing(VirtioNet.TxQueue, QueueSize, TxRing);
        using var bag = new FdBag(txKick, txCall);
        fe.WriteDescriptor(TxRing, 0, 0x80000, 72, 0, 0); // in the hole between the regions
        fe.MakeAvailable(TxRing, QueueSize, 0);
        VhostUserTestFrontend.Signal(txKick);
        Assert.True(fe.WaitUsed(TxRing, QueueSize, 1));
        Assert.Equal((0u, 0u), fe.UsedEntry(TxRing, QueueSize, 0));
        Assert.Empty(_net.Drain());
    }

    [Fact]
    public void A_disconnect_in_the_middle_of_a_message_and_of_a_transfer_resets_the_device()
    {
        VhostUserTestFrontend fe = Connect(out Task gone);
        fe.Handshake(NetFeatures);
        (int rxKick, int rxCall) = fe.StartRing(VirtioNet.RxQueue, QueueSize, RxRing);
        using var bag = new FdBag(rxKick, rxCall);
        // Frames wait for guest buffers that never come; then half a message and the frontend is gone.
        Assert.True(_net.Port!.Deliver(Frame(0x55)));
        byte[] header = new byte[VhostUserHeader.Length + 10];
        new VhostUserHeader(VhostUserRequest.SetMemTable, VhostUserFlags.Version, 8 + 32).Write(header);
        Assert.True(fe.SendRaw(header));
        fe.Dispose();
        Assert.True(Ended(gone));
        Assert.Contains("inside the payload", _backend.LastError, StringComparison.Ordinal);
        RoundTrip(0x60); // the stale frame was dropped by the reset: the next frontend sees only its own
    }

    [Fact]
    public void Get_vring_base_stops_the_ring_and_returns_the_next_avail_index()
    {
        using VhostUserTestFrontend fe = Connect(out _);
        fe.Handshake(NetFeatures);
        (int txKick, int txCall) = fe.StartRing(VirtioNet.TxQueue, QueueSize, TxRing);
        using var bag = new FdBag(txKick, txCall);
        byte[] tx = Frame(0x66);
        fe.Gpa(TxBuffer, 12).Clear();
        tx.CopyTo(fe.Gpa(TxBuffer + 12, tx.Length));
        fe.WriteDescriptor(TxRing, 0, TxBuffer, (uint)(12 + tx.Length), 0, 0);
        fe.MakeAvailable(TxRing, QueueSize, 0);
        VhostUserTestFrontend.Signal(txKick);
        Assert.True(fe.WaitUsed(TxRing, QueueSize, 1));
        Assert.True(fe.Send(VhostUserRequest.GetVringBase, VhostUserTestFrontend.State(VirtioNet.TxQueue, 0)));
        var reply = fe.Receive();
        Assert.NotNull(reply);
        Assert.True(VringState.TryParse(reply.Value.Payload, out VringState state));
        Assert.Equal(new VringState(VirtioNet.TxQueue, 1), state);
    }

    [Fact]
    public void Vsock_guest_cid_comes_from_get_config()
    {
        var vsock = new VirtioVsock(42, new NullVsockHost());
        using var backend = new VhostUserBackend(vsock);
        (Socket ours, Socket theirs) = VhostUserTestFrontend.Pair();
        backend.Serve(ours);
        using var fe = new VhostUserTestFrontend(theirs);
        byte[] request = new byte[VhostConfigView.HeaderLength + 8];
        BinaryPrimitives.WriteUInt32LittleEndian(request.AsSpan(4), 8);
        Assert.True(fe.Send(VhostUserRequest.GetConfig, request));
        var reply = fe.Receive();
        Assert.NotNull(reply);
        Assert.Equal(VhostConfigView.HeaderLength + 8, reply.Value.Payload.Length);
        Assert.Equal(42UL, BinaryPrimitives.ReadUInt64LittleEndian(reply.Value.Payload.AsSpan(VhostConfigView.HeaderLength)));
    }

    private sealed class NullVsockHost : IVsockHost
    {
        public void Connect(VsockConnection connection)
        {
        }

        public void Established(VsockConnection connection)
        {
        }

        public void Wake(VsockConnection connection)
        {
        }

        public void Close(VsockConnection connection)
        {
        }
    }

    [Fact]
    public void Listen_binds_owner_only_refuses_a_regular_file_and_replaces_a_stale_socket()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-vhost-listen-");
        try
        {
            string file = Path.Combine(dir.FullName, "not-a-socket");
            File.WriteAllText(file, "x");
            using (var b = new VhostUserBackend(new VirtioVsock(3, new NullVsockHost())))
            {
                Assert.Throws<IOException>(() => b.Listen(file));
            }
            string stale = Path.Combine(dir.FullName, "stale.sock");
            using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
            {
                s.Bind(new UnixDomainSocketEndPoint(stale)); // bound, never listening, then closed: stale
            }
            using var backend = new VhostUserBackend(_device);
            backend.Listen(stale);
            if (!OperatingSystem.IsWindows())
            {
                Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(stale));
            }
            using (var second = new VhostUserBackend(new VirtioVsock(3, new NullVsockHost())))
            {
                Assert.Throws<IOException>(() => second.Listen(stale)); // in use
            }
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            client.Connect(new UnixDomainSocketEndPoint(stale));
            using var fe = new VhostUserTestFrontend(client);
            Assert.NotEqual(0UL, fe.Request64(VhostUserRequest.GetFeatures));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void The_socket_pair_leaves_their_end_inheritable_and_ours_close_on_exec()
    {
        using var pair = Kit.Linux.SocketPair.Create();
        Assert.False(Sys.IsCloseOnExec(pair.ChildFd));
        Assert.True(Sys.IsCloseOnExec((int)pair.Ours.SafeHandle.DangerousGetHandle()));
    }
}
