using System.Security.Cryptography;
using Kit.HyperKit.Devices.Virtio.Vsock;

namespace Kit.HyperKit.Tests;

/// <summary>
/// The vsock device and its connection state machine, driven by a scripted guest over fake memory and the real
/// virtio-pci transport, with a recording host side and a fake clock (no sockets, no threads).
/// </summary>
public sealed class VirtioVsockTests : IDisposable
{
    private const uint GuestPort = 1234, HostPort = 5000, GuestEphemeral = 40000;
    private readonly RecordingVsockHost _host = new();
    private long _now = 1000;
    private VsockTestGuest _guest;

    public VirtioVsockTests()
    {
        _guest = new VsockTestGuest(_host, clock: () => _now);
        _guest.BringUp();
    }

    public void Dispose() => _guest.Dispose();

    private void Recreate(int maxConnections = VirtioVsock.DefaultMaxConnections, int bufAlloc = VirtioVsock.DefaultBufAlloc)
    {
        _guest.Dispose();
        _guest = new VsockTestGuest(_host, maxConnections, bufAlloc, () => _now);
        _guest.BringUp();
    }

    private (VsockHeader Header, byte[] Payload) Last => _guest.Received[^1];

    private List<(VsockHeader Header, byte[] Payload)> Take()
    {
        _guest.Poll();
        var all = _guest.Received.ToList();
        _guest.Received.Clear();
        return all;
    }

    /// <summary>Host client asks for the guest's port; the guest accepts. Returns the connection.</summary>
    private VsockConnection OpenFromHost(uint guestBufAlloc = 64 * 1024)
    {
        VsockConnection? c = _guest.Device.OpenFromHost(GuestPort, null);
        Assert.NotNull(c);
        var request = Assert.Single(Take());
        Assert.Equal(VsockOp.Request, request.Header.Op);
        _guest.Send(VsockOp.Response, GuestPort, request.Header.SrcPort, bufAlloc: guestBufAlloc);
        Assert.Equal(VsockConnectionState.Established, c.State);
        return c;
    }

    /// <summary>The guest connects to a host port and the host side's connect succeeds.</summary>
    private VsockConnection OpenFromGuest(uint guestBufAlloc = 64 * 1024)
    {
        _guest.Send(VsockOp.Request, GuestEphemeral, HostPort, bufAlloc: guestBufAlloc);
        VsockConnection c = Assert.Single(_host.Connects);
        Assert.True(_guest.Device.HostConnected(c, "socket"));
        Assert.Equal(VsockOp.Response, Assert.Single(Take()).Header.Op);
        return c;
    }

    /// <summary>Plays the host socket: reads what the device allows into the to-guest buffer.</summary>
    private int HostSends(VsockConnection c, ReadOnlySpan<byte> data)
    {
        int done = 0;
        while (done < data.Length)
        {
            Memory<byte> space = _guest.Device.HostReadBuffer(c, out bool finished);
            if (finished || space.IsEmpty)
            {
                break;
            }
            int n = Math.Min(space.Length, data.Length - done);
            data.Slice(done, n).CopyTo(space.Span);
            _guest.Device.HostReceived(c, n);
            done += n;
        }
        return done;
    }

    /// <summary>Plays the host socket: takes everything the device has for it.</summary>
    private byte[] HostReceives(VsockConnection c)
    {
        var output = new MemoryStream();
        while (true)
        {
            ReadOnlyMemory<byte> data = _guest.Device.HostWriteData(c, out _, out _);
            if (data.IsEmpty)
            {
                return output.ToArray();
            }
            output.Write(data.Span);
            _guest.Device.HostWritten(c, data.Length);
        }
    }

    [Fact]
    public void DescribesItselfAsVsockWithTheGuestCid()
    {
        Assert.Equal(19, _guest.Device.DeviceType);
        Assert.Equal(3, _guest.Device.QueueCount);
        Assert.Equal(VsockTestGuest.Cid, _guest.ConfigCid());
        Assert.Throws<ArgumentOutOfRangeException>(() => new VirtioVsock(2, _host));
    }

    [Fact]
    public void HostInitiatedConnectionCarriesDataBothWays()
    {
        VsockConnection? c = _guest.Device.OpenFromHost(GuestPort, null, "early"u8);
        Assert.NotNull(c);
        var request = Assert.Single(Take()).Header;
        Assert.Equal(VsockOp.Request, request.Op);
        Assert.Equal((Vsock.HostCid, VsockTestGuest.Cid), (request.SrcCid, request.DstCid));
        Assert.Equal((VirtioVsock.FirstHostPort, GuestPort), (request.SrcPort, request.DstPort));
        Assert.Equal((uint)VirtioVsock.DefaultBufAlloc, request.BufAlloc);
        Assert.Equal(Vsock.TypeStream, request.Type);

        _guest.Send(VsockOp.Response, GuestPort, request.SrcPort);
        Assert.Same(c, Assert.Single(_host.Establishes));
        // Bytes the client wrote after its CONNECT line come first.
        var early = Assert.Single(Take());
        Assert.Equal(VsockOp.Rw, early.Header.Op);
        Assert.Equal("early"u8.ToArray(), early.Payload);

        _guest.Send(VsockOp.Rw, GuestPort, request.SrcPort, "from-guest"u8);
        Assert.Equal("from-guest"u8.ToArray(), HostReceives(c));
        Assert.Equal(10, c.BytesFromGuest);

        Assert.Equal(9, HostSends(c, "from-host"u8));
        var rw = Assert.Single(Take());
        Assert.Equal("from-host"u8.ToArray(), rw.Payload);
        Assert.Equal(10u, rw.Header.FwdCnt); // our fwd_cnt rides on every packet
    }

    [Fact]
    public void SecondHostConnectionGetsTheNextPort()
    {
        VsockConnection a = OpenFromHost();
        VsockConnection b = OpenFromHost();
        Assert.Equal(VirtioVsock.FirstHostPort, a.LocalPort);
        Assert.Equal(VirtioVsock.FirstHostPort + 1, b.LocalPort);
    }

    [Fact]
    public void GuestRefusalClosesTheHostSide()
    {
        VsockConnection? c = _guest.Device.OpenFromHost(GuestPort, null);
        var request = Assert.Single(Take()).Header;
        _guest.Send(VsockOp.Rst, GuestPort, request.SrcPort);
        Assert.Same(c, Assert.Single(_host.Closes));
        Assert.Equal(0, _guest.Device.ConnectionCount);
        Assert.Empty(Take()); // never a RST in reply to a RST
    }

    [Fact]
    public void GuestInitiatedConnectionIsAnsweredOnceTheHostSocketConnects()
    {
        _guest.Send(VsockOp.Request, GuestEphemeral, HostPort);
        VsockConnection c = Assert.Single(_host.Connects);
        Assert.Equal((HostPort, GuestEphemeral), (c.LocalPort, c.PeerPort));
        Assert.Empty(Take()); // nothing until the host side answers
        Assert.True(_guest.Device.HostConnected(c, "socket"));
        var response = Assert.Single(Take()).Header;
        Assert.Equal(VsockOp.Response, response.Op);
        Assert.Equal((HostPort, GuestEphemeral), (response.SrcPort, response.DstPort));
        _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, "ping"u8);
        Assert.Equal("ping"u8.ToArray(), HostReceives(c));
    }

    [Fact]
    public void GuestConnectionToAnAbsentHostListenerIsReset()
    {
        _guest.Send(VsockOp.Request, GuestEphemeral, HostPort);
        VsockConnection c = Assert.Single(_host.Connects);
        Assert.False(_guest.Device.HostConnected(c, null));
        var rst = Assert.Single(Take()).Header;
        Assert.Equal(VsockOp.Rst, rst.Op);
        Assert.Equal((HostPort, GuestEphemeral), (rst.SrcPort, rst.DstPort));
        Assert.Equal(0, _guest.Device.ConnectionCount);
    }

    [Fact]
    public void PacketsForUnknownPortsGetRst()
    {
        _guest.Send(VsockOp.Rw, 7, 8, "x"u8);
        _guest.Send(VsockOp.Shutdown, 9, 10, flags: Vsock.ShutdownBoth);
        _guest.Send(VsockOp.Rst, 11, 12); // RST for nothing: dropped silently
        var packets = Take();
        Assert.Equal(2, packets.Count);
        Assert.All(packets, p => Assert.Equal(VsockOp.Rst, p.Header.Op));
        Assert.Equal((8u, 7u), (packets[0].Header.SrcPort, packets[0].Header.DstPort));
        Assert.Equal((10u, 9u), (packets[1].Header.SrcPort, packets[1].Header.DstPort));
        Assert.Equal(VsockTestGuest.Cid, packets[0].Header.DstCid);
    }

    [Fact]
    public void HostToGuestDataRespectsTheGuestsCreditAcrossSeveralWindows()
    {
        const int window = 8192;
        VsockConnection c = OpenFromHost(guestBufAlloc: window);
        byte[] data = RandomNumberGenerator.GetBytes(5 * window + 100);
        var received = new MemoryStream();
        int sent = 0;
        uint guestFwd = 0;
        int rounds = 0;
        while (received.Length < data.Length && rounds++ < 50)
        {
            sent += HostSends(c, data.AsSpan(sent));
            long before = received.Length;
            foreach (var p in Take())
            {
                Assert.Equal(VsockOp.Rw, p.Header.Op);
                received.Write(p.Payload);
            }
            // Never more in flight than the guest's buffer.
            Assert.True(received.Length - guestFwd <= window, $"device sent {received.Length - guestFwd} bytes into a {window}-byte window");
            // The guest's application reads everything and the driver says so.
            guestFwd = (uint)received.Length;
            _guest.Send(VsockOp.CreditUpdate, GuestPort, c.LocalPort, bufAlloc: window, fwdCnt: guestFwd);
        }
        Assert.Equal(data, received.ToArray());
        Assert.True(rounds > 5, "the transfer should have needed several credit windows");
    }

    [Fact]
    public void GuestToHostCreditIsReturnedWithCreditUpdates()
    {
        const int bufAlloc = 16 * 1024;
        Recreate(bufAlloc: bufAlloc);
        VsockConnection c = OpenFromGuest();
        byte[] data = RandomNumberGenerator.GetBytes(4 * bufAlloc);
        var atHost = new MemoryStream();
        uint guestTx = 0;
        uint peerFwd = 0;
        while (guestTx < data.Length)
        {
            // The guest sends only what our credit allows (buf_alloc - (tx_cnt - fwd_cnt)).
            int credit = (int)(bufAlloc - (guestTx - peerFwd));
            Assert.True(credit > 0, "the guest ran out of credit: no CREDIT_UPDATE came");
            int n = Math.Min(Math.Min(credit, 4096), data.Length - (int)guestTx);
            _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, data.AsSpan((int)guestTx, n));
            guestTx += (uint)n;
            if (guestTx - peerFwd >= bufAlloc)
            {
                atHost.Write(HostReceives(c));
                var update = Take().Last().Header;
                Assert.Equal(VsockOp.CreditUpdate, update.Op);
                Assert.Equal((uint)bufAlloc, update.BufAlloc);
                peerFwd = update.FwdCnt;
            }
        }
        atHost.Write(HostReceives(c));
        Assert.Equal(data, atHost.ToArray());
    }

    [Fact]
    public void GuestExceedingItsCreditIsReset()
    {
        Recreate(bufAlloc: 8192);
        VsockConnection c = OpenFromGuest();
        _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, new byte[8192]);
        _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, new byte[1]);
        Assert.Equal(VsockOp.Rst, Assert.Single(Take()).Header.Op);
        Assert.Same(c, Assert.Single(_host.Closes));
    }

    [Fact]
    public void CreditRequestIsAnswered()
    {
        VsockConnection c = OpenFromGuest();
        _guest.Send(VsockOp.CreditRequest, GuestEphemeral, HostPort);
        var update = Assert.Single(Take()).Header;
        Assert.Equal(VsockOp.CreditUpdate, update.Op);
        Assert.Equal(c.BufAlloc, update.BufAlloc);
    }

    [Fact]
    public void GuestHalfCloseShutsTheHostWriteSideAfterItsBytes()
    {
        VsockConnection c = OpenFromGuest();
        _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, "last words"u8);
        _guest.Send(VsockOp.Shutdown, GuestEphemeral, HostPort, flags: Vsock.ShutdownSend);
        _guest.Device.HostWriteData(c, out bool shutNow, out _);
        Assert.False(shutNow); // bytes first
        Assert.Equal("last words"u8.ToArray(), HostReceives(c));
        _guest.Device.HostWriteData(c, out shutNow, out _);
        Assert.True(shutNow);
        _guest.Device.HostWriteShut(c);
        // Half-closed: the other direction still works.
        HostSends(c, "reply"u8);
        Assert.Equal("reply"u8.ToArray(), Assert.Single(Take(), p => p.Header.Op == VsockOp.Rw).Payload);
        // Host EOF: SHUTDOWN goes to the guest; both directions are done, so it says RCV|SEND.
        _guest.Device.HostReceived(c, 0);
        var shutdown = Assert.Single(Take()).Header;
        Assert.Equal(VsockOp.Shutdown, shutdown.Op);
        Assert.Equal(Vsock.ShutdownBoth, shutdown.Flags);
        // The guest answers with RST and the host socket is closed.
        _guest.Send(VsockOp.Rst, GuestEphemeral, HostPort);
        Assert.Same(c, Assert.Single(_host.Closes));
        Assert.Equal(0, _guest.Device.ConnectionCount);
    }

    [Fact]
    public void HostEofBecomesShutdownSendAfterTheBufferedBytes()
    {
        VsockConnection c = OpenFromHost();
        HostSends(c, "tail"u8);
        _guest.Device.HostReceived(c, 0);
        var packets = Take();
        Assert.Equal([VsockOp.Rw, VsockOp.Shutdown], packets.Select(p => p.Header.Op));
        Assert.Equal(Vsock.ShutdownSend, packets[1].Header.Flags);
        // The guest can still send; then it closes fully and gets RST once its bytes are at the host.
        _guest.Send(VsockOp.Rw, GuestPort, c.LocalPort, "bye"u8);
        _guest.Send(VsockOp.Shutdown, GuestPort, c.LocalPort, flags: Vsock.ShutdownBoth);
        Assert.Empty(Take());
        Assert.Equal("bye"u8.ToArray(), HostReceives(c));
        _guest.Device.HostWriteData(c, out bool shut, out _);
        Assert.True(shut);
        _guest.Device.HostWriteShut(c);
        Assert.Equal(VsockOp.Rst, Assert.Single(Take()).Header.Op);
        Assert.Same(c, Assert.Single(_host.Closes));
    }

    [Fact]
    public void GuestThatNeverAnswersAFullShutdownIsReset()
    {
        VsockConnection c = OpenFromGuest();
        _guest.Send(VsockOp.Shutdown, GuestEphemeral, HostPort, flags: Vsock.ShutdownSend);
        _guest.Device.HostWriteShut(c);
        _guest.Device.HostReceived(c, 0);
        Assert.Equal(Vsock.ShutdownBoth, Assert.Single(Take()).Header.Flags);
        _now += VsockConnection.CloseTimeoutMs + 1;
        _guest.Device.Tick();
        Assert.Equal(VsockOp.Rst, Assert.Single(Take()).Header.Op);
        Assert.Same(c, Assert.Single(_host.Closes));
    }

    [Fact]
    public void GuestThatNeverAnswersARequestIsResetAfterTheConnectTimeout()
    {
        VsockConnection? c = _guest.Device.OpenFromHost(GuestPort, null);
        Assert.Equal(VsockOp.Request, Assert.Single(Take()).Header.Op);
        _guest.Device.Tick();
        Assert.Empty(Take());
        _now += VsockConnection.ConnectTimeoutMs + 1;
        _guest.Device.Tick();
        Assert.Equal(VsockOp.Rst, Assert.Single(Take()).Header.Op);
        Assert.Same(c, Assert.Single(_host.Closes));
    }

    [Fact]
    public void MalformedPacketsAreCountedAndNeverCrashTheDevice()
    {
        VsockConnection c = OpenFromGuest();
        ushort txBefore = _guest.TxUsedIdx;
        // A header shorter than 44 bytes.
        _guest.SendRaw(new byte[20]);
        Assert.Equal(1, _guest.Device.MalformedPackets);
        // A source CID that is not the guest's: dropped without a reply.
        _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, "x"u8, srcCid: 77);
        Assert.Equal(1, _guest.Device.DroppedPackets);
        Assert.Empty(Take());
        Assert.Equal(VsockConnectionState.Established, c.State);
        // Every chain went back to the driver.
        Assert.Equal(txBefore + 2, _guest.TxUsedIdx);
    }

    [Theory]
    [InlineData(1000u)]          // len beyond the chain
    [InlineData(0x0010_0000u)]   // len beyond 64 KiB
    [InlineData(uint.MaxValue)]
    public void LyingLengthsResetTheConnection(uint len)
    {
        VsockConnection c = OpenFromGuest();
        _guest.Send(VsockOp.Rw, GuestEphemeral, HostPort, new byte[10], len: len);
        Assert.Equal(1, _guest.Device.MalformedPackets);
        Assert.Equal(VsockOp.Rst, Assert.Single(Take()).Header.Op);
        Assert.Same(c, Assert.Single(_host.Closes));
        Assert.Empty(HostReceivesNothing(c));
    }

    private byte[] HostReceivesNothing(VsockConnection c) => _guest.Device.HostWriteData(c, out _, out _).ToArray();

    [Fact]
    public void WrongTypeWrongDestinationAndUnknownOpsAreReset()
    {
        _guest.Send(VsockOp.Request, 1, 2, type: 2);              // SEQPACKET is not offered
        _guest.Send(VsockOp.Request, 3, 4, dstCid: 9);            // nobody but the host here
        var packets = Take();
        Assert.Empty(_host.Connects);
        VsockConnection c = OpenFromGuest();
        _guest.Send((VsockOp)99, GuestEphemeral, HostPort);       // unknown op on a live connection
        packets.AddRange(Take());
        Assert.Equal(3, packets.Count);
        Assert.All(packets, p => Assert.Equal(VsockOp.Rst, p.Header.Op));
        Assert.Same(c, Assert.Single(_host.Closes));
        // Data before the connection is accepted is a protocol error too.
        VsockConnection? pending = _guest.Device.OpenFromHost(GuestPort, null);
        var request = Assert.Single(Take()).Header;
        _guest.Send(VsockOp.Rw, GuestPort, request.SrcPort, "early"u8);
        Assert.Equal(VsockOp.Rst, Assert.Single(Take()).Header.Op);
        Assert.Equal(VsockConnectionState.Closed, pending!.State);
    }

    [Fact]
    public void ConnectionsAreBounded()
    {
        Recreate(maxConnections: 2);
        _guest.Send(VsockOp.Request, 100, HostPort);
        _guest.Send(VsockOp.Request, 101, HostPort);
        _guest.Send(VsockOp.Request, 102, HostPort);
        Assert.Equal(2, _host.Connects.Count);
        var rst = Assert.Single(Take()).Header;
        Assert.Equal((VsockOp.Rst, 102u), (rst.Op, rst.DstPort));
        Assert.Null(_guest.Device.OpenFromHost(GuestPort, null));
        Assert.Equal(2, _guest.Device.RefusedConnections);
    }

    [Fact]
    public void RstQueueIsBoundedWhenTheGuestPostsNoRxBuffers()
    {
        _guest.Dispose();
        _guest = new VsockTestGuest(_host, clock: () => _now);
        _guest.BringUp(postRx: false);
        for (uint i = 0; i < 300; i++)
        {
            _guest.Send(VsockOp.Rw, 1000 + i, 9, "x"u8);
        }
        Assert.True(_guest.Device.DroppedPackets >= 300 - 128);
        _guest.PostRx(32);
        Assert.Equal(32, Take().Count);
    }

    [Fact]
    public void DeviceResetDropsEveryConnection()
    {
        VsockConnection a = OpenFromGuest();
        VsockConnection b = OpenFromHost();
        _guest.Transport.BarWrite(0, 20, [0]); // device_status = 0
        Assert.Equal(0, _guest.Device.ConnectionCount);
        Assert.Equal(2, _host.Closes.Count);
        Assert.Equal(VsockConnectionState.Closed, a.State);
        Assert.Equal(VsockConnectionState.Closed, b.State);
    }
}
