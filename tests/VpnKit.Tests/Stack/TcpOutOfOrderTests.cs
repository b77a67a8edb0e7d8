using Kit.Buffers;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>
/// The receiver's out-of-order queue (RFC 9293 §3.10.7.4), the SACK option (RFC 2018) both ways, and the windows of
/// duplicate ACKs: the queue on its own, then through the gateway as a guest sees it.
/// </summary>
public sealed class TcpOutOfOrderTests
{
    private static readonly uint Nxt = 0xFFFF_FF00; // near the wrap, so every comparison crosses it

    private static byte[] Bytes(int n, int seed) => Enumerable.Range(0, n).Select(i => (byte)((i * 7) + seed)).ToArray();

    private static byte[] Drain(TcpOutOfOrderQueue q, ref uint nxt, int room = 1 << 16)
    {
        var ring = new ByteRing(room);
        nxt = q.Drain(nxt, ring);
        byte[] got = new byte[ring.Count];
        ring.Read(got);
        return got;
    }

    [Fact]
    public void SegmentsHeldOutOfOrderComeOutInOrderOnceTheHoleFills()
    {
        var q = new TcpOutOfOrderQueue(1 << 16);
        byte[] all = Bytes(3000, 1);
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 10_000, Nxt + 2000, all.AsSpan(2000)));
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 10_000, Nxt + 1000, all.AsSpan(1000, 1000)));
        Assert.Equal(1, q.RunCount); // adjacent runs merge
        Assert.Equal(2000, q.Bytes);
        uint nxt = Nxt;
        Assert.Empty(Drain(q, ref nxt)); // the hole is still there
        Assert.Equal(Nxt, nxt);
        nxt = Nxt + 1000; // the caller took the first 1000 bytes in order
        Assert.Equal(all.AsSpan(1000).ToArray(), Drain(q, ref nxt));
        Assert.Equal(Nxt + 3000, nxt);
        Assert.True(q.IsEmpty);
    }

    [Fact]
    public void OverlapsMergeAndTheNewestBytesWin()
    {
        var q = new TcpOutOfOrderQueue(1 << 16);
        q.Insert(Nxt, Nxt + 10_000, Nxt + 100, Bytes(100, 1));      // [100, 200)
        q.Insert(Nxt, Nxt + 10_000, Nxt + 300, Bytes(100, 2));      // [300, 400)
        Assert.Equal(2, q.RunCount);
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 10_000, Nxt + 150, Bytes(200, 3))); // [150, 350) bridges both
        Assert.Equal(1, q.RunCount);
        Assert.Equal(300, q.Bytes);
        uint nxt = Nxt + 100;
        byte[] got = Drain(q, ref nxt);
        Assert.Equal(Nxt + 400, nxt);
        Assert.Equal(Bytes(100, 1).AsSpan(0, 50).ToArray(), got.AsSpan(0, 50).ToArray());
        Assert.Equal(Bytes(200, 3), got.AsSpan(50, 200).ToArray());
        Assert.Equal(Bytes(100, 2).AsSpan(50).ToArray(), got.AsSpan(250).ToArray());
    }

    [Fact]
    public void ARepeatIsADuplicateAndBytesBelowRcvNxtAreNotHeld()
    {
        var q = new TcpOutOfOrderQueue(1 << 16);
        q.Insert(Nxt, Nxt + 10_000, Nxt + 100, Bytes(100, 1));
        Assert.Equal(OutOfOrderResult.Duplicate, q.Insert(Nxt, Nxt + 10_000, Nxt + 120, Bytes(50, 1).AsSpan(20).ToArray()));
        Assert.Equal(100, q.Bytes);
        // A segment that starts below RCV.NXT keeps only its part from RCV.NXT on.
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt + 50, Nxt + 10_000, Nxt + 10, Bytes(60, 9)));
        Assert.Equal(2, q.RunCount);
        Assert.Equal(120, q.Bytes);
    }

    [Fact]
    public void NothingIsHeldPastTheWindowOrTheCapacity()
    {
        var q = new TcpOutOfOrderQueue(1000);
        Assert.Equal(OutOfOrderResult.OutsideWindow, q.Insert(Nxt, Nxt + 500, Nxt + 500, Bytes(10, 1)));
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 500, Nxt + 450, Bytes(100, 1)));
        Assert.Equal(50, q.Bytes); // cut at the window's right edge
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 5000, Nxt + 900, Bytes(500, 2)));
        Assert.Equal(150, q.Bytes); // and at the capacity (the receive buffer's size)
        Assert.Equal(OutOfOrderResult.OutsideWindow, q.Insert(Nxt, Nxt + 5000, Nxt + 1000, Bytes(10, 3)));
        Assert.Equal(OutOfOrderResult.OutsideWindow, q.Insert(Nxt, Nxt + 5000, Nxt + 600, []));
    }

    [Fact]
    public void ASprayOfIslandsFillsTheQueueAndTheRestIsDropped()
    {
        var q = new TcpOutOfOrderQueue(1 << 16);
        for (int i = 0; i < TcpOutOfOrderQueue.MaxRuns; i++)
        {
            Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 60_000, Nxt + 10 + (uint)(i * 10), [1]));
        }
        Assert.Equal(OutOfOrderResult.Full, q.Insert(Nxt, Nxt + 60_000, Nxt + 5000, [1]));
        Assert.Equal(TcpOutOfOrderQueue.MaxRuns, q.RunCount);
        // A segment that joins runs already held still fits: it adds no run.
        Assert.Equal(OutOfOrderResult.Held, q.Insert(Nxt, Nxt + 60_000, Nxt + 11, Bytes(9, 1)));
        Assert.Equal(TcpOutOfOrderQueue.MaxRuns - 1, q.RunCount);
    }

    [Fact]
    public void DrainStopsWhereTheReceiveBufferIsFullAndKeepsTheRest()
    {
        var q = new TcpOutOfOrderQueue(1 << 16);
        q.Insert(Nxt, Nxt + 10_000, Nxt + 100, Bytes(400, 5));
        uint nxt = Nxt + 100;
        byte[] first = Drain(q, ref nxt, room: 150);
        Assert.Equal(Bytes(400, 5).AsSpan(0, 150).ToArray(), first);
        Assert.Equal(Nxt + 250, nxt);
        Assert.Equal(250, q.Bytes);
        Assert.Equal(Bytes(400, 5).AsSpan(150).ToArray(), Drain(q, ref nxt));
        Assert.True(q.IsEmpty);
    }

    [Fact]
    public void SackReportsTheNewestRunsFirstAndAtMostFour()
    {
        var q = new TcpOutOfOrderQueue(1 << 16);
        uint[] starts = [500, 100, 900, 300, 700];
        foreach (uint s in starts)
        {
            q.Insert(Nxt, Nxt + 60_000, Nxt + s, Bytes(50, 1));
        }
        SackBlocks b = q.Sack();
        Assert.Equal(4, b.Count);
        Assert.Equal(new uint[] { Nxt + 700, Nxt + 300, Nxt + 900, Nxt + 100 }, new[] { b.Left(0), b.Left(1), b.Left(2), b.Left(3) });
        Assert.Equal(Nxt + 750, b.Right(0));
        // A segment merging into an older run makes that run the newest (RFC 2018 §4: the first block holds the latest segment).
        q.Insert(Nxt, Nxt + 60_000, Nxt + 550, Bytes(10, 1));
        Assert.Equal((Nxt + 500, Nxt + 560), (q.Sack().Left(0), q.Sack().Right(0)));
    }

    [Fact]
    public void SackOptionRoundTripsOneToFourBlocks()
    {
        for (int n = 1; n <= SackBlocks.MaxBlocks; n++)
        {
            var b = new SackBlocks();
            for (int i = 0; i < n; i++)
            {
                b.Add((uint)(i * 1000) + 0xFFFF_F000, (uint)(i * 1000) + 0xFFFF_F100);
            }
            byte[] wire = new byte[40];
            int len = b.Write(wire);
            Assert.Equal(4 + (8 * n), len);
            Assert.Equal(0, len % 4);
            Assert.Equal(new byte[] { 1, 1, 5, (byte)(2 + (8 * n)) }, wire.AsSpan(0, 4).ToArray());
            Assert.True(SackBlocks.TryParse(wire.AsSpan(0, len), out SackBlocks back));
            Assert.Equal(n, back.Count);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal((b.Left(i), b.Right(i)), (back.Left(i), back.Right(i)));
            }
        }
        var five = new SackBlocks();
        for (int i = 0; i < 5; i++)
        {
            five.Add(1, 2);
        }
        Assert.Equal(SackBlocks.MaxBlocks, five.Count);
        Assert.Equal(0, default(SackBlocks).Write(new byte[4]));
    }

    [Theory]
    [InlineData(new byte[] { 5, 9, 0, 0, 0, 1, 0, 0, 0 })]                      // 9: not 2 + 8n
    [InlineData(new byte[] { 5, 2 })]                                           // no block
    [InlineData(new byte[] { 5, 10, 0, 0, 0, 1, 0, 0 })]                        // runs past the options
    [InlineData(new byte[] { 5, 0, 0, 0 })]                                     // length 0
    [InlineData(new byte[] { 5, 1, 1, 1 })]                                     // length 1
    [InlineData(new byte[] { 5 })]                                              // kind alone
    [InlineData(new byte[] { 3, 0, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2 })]            // a bad option before it ends the walk
    [InlineData(new byte[] { 0, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2 })]            // after End of option list
    [InlineData(new byte[] { 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2 })]            // timestamps only
    public void AMalformedOrMissingSackOptionIsIgnored(byte[] options)
    {
        Assert.False(SackBlocks.TryParse(options, out SackBlocks b));
        Assert.Equal(0, b.Count);
    }

    [Fact]
    public void TheSackParserNeverThrowsOnArbitraryBytes()
    {
        var rng = new Random(7);
        byte[] o = new byte[40];
        for (int i = 0; i < 20_000; i++)
        {
            int len = rng.Next(0, 41);
            rng.NextBytes(o.AsSpan(0, len));
            if (len > 1 && rng.Next(2) == 0)
            {
                o[rng.Next(0, len - 1)] = 5; // often a SACK kind, with whatever length follows
            }
            if (SackBlocks.TryParse(o.AsSpan(0, len), out SackBlocks b))
            {
                Assert.InRange(b.Count, 1, SackBlocks.MaxBlocks);
            }
        }
    }

    // ---- Through the gateway: a Linux-like guest (MSS 1460, scale 7, SACK-permitted) sending to the socket ----

    private readonly CapturingSink _sink = new();
    private readonly RecordingFlows _flows = new();
    private Gateway _gw;
    private long _now = 1000;

    public TcpOutOfOrderTests() => _gw = new Gateway(new GatewayOptions { IsnSecret = 42 }, _sink, _flows);

    private (TcpSocket C, uint Iss) Open(bool sack = true, ushort guestWindow = 60000)
    {
        var opts = new TcpOptions { Mss = 1000, WindowScale = 0, SackPermitted = sack };
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1000, 0, TcpFlags.Syn, 65535, options: opts), _now);
        TcpSocket c = _flows.ConnectRequests[^1];
        Assert.True(c.CompleteConnect(connected: true, _now));
        Seg synAck = Assert.Single(G.Segments(_sink));
        Assert.Equal(sack, synAck.Options.SackPermitted);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, synAck.Seq + 1, TcpFlags.Ack, guestWindow), _now);
        Assert.Equal(TcpState.Established, c.State);
        return (c, synAck.Seq);
    }

    private void Send(uint iss, uint seq, byte[] data) =>
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, seq, iss + 1, TcpFlags.Ack, 60000, payload: data), _now);

    private static SackBlocks SackOf(Seg s)
    {
        SackBlocks.TryParse(s.OptionBytes, out SackBlocks b);
        return b;
    }

    private static byte[] ReadAll(TcpSocket c, long now)
    {
        byte[] got = new byte[c.Readable];
        Assert.Equal(got.Length, c.Read(got, now));
        return got;
    }

    [Fact]
    public void ALostSegmentCostsOneRetransmissionNotTheWindow()
    {
        (TcpSocket c, uint iss) = Open();
        byte[] data = Bytes(4000, 3);
        // The first 1000 bytes are lost; the next three arrive and are held, each answered at once by a duplicate ACK
        // whose SACK block grows, newest first.
        for (int i = 1; i < 4; i++)
        {
            Send(iss, 1001 + (uint)(i * 1000), data.AsSpan(i * 1000, 1000).ToArray());
            Seg dup = Assert.Single(G.Segments(_sink));
            Assert.Equal(1001u, dup.Ack);
            SackBlocks b = SackOf(dup);
            Assert.Equal(1, b.Count);
            Assert.Equal((2001u, 2001u + (uint)(i * 1000)), (b.Left(0), b.Right(0)));
        }
        Assert.Equal(0, c.Readable);
        Assert.Equal(3, _gw.Counters.TcpOutOfOrder);
        Send(iss, 1001, data.AsSpan(0, 1000).ToArray()); // the retransmission fills the hole
        Seg ack = Assert.Single(G.Segments(_sink));
        Assert.Equal(5001u, ack.Ack); // at once, everything, and no SACK left to report
        Assert.Equal(0, SackOf(ack).Count);
        Assert.Equal(data, ReadAll(c, _now));
    }

    [Fact]
    public void DuplicateAcksKeepTheirWindowWhileTheHostDrains()
    {
        (TcpSocket c, uint iss) = Open(sack: false);
        // Segment k carries bytes 1001 + 1000k on, Bytes(1000, k).
        Send(iss, 1001, Bytes(1000, 0));
        Send(iss, 2001, Bytes(1000, 1));
        G.Segments(_sink);
        Send(iss, 4001, Bytes(1000, 3)); // segment 2 (3001..4000) lost
        Seg first = Assert.Single(G.Segments(_sink));
        Assert.Equal(3001u, first.Ack);
        Assert.Empty(first.OptionBytes); // no SACK without SACK-permitted, but the segment is held all the same
        ReadAll(c, _now); // the host drains 2000 bytes: the free room grows, no window update goes out
        Assert.Empty(G.Segments(_sink));
        for (int k = 4; k < 7; k++)
        {
            Send(iss, 1001 + (uint)(k * 1000), Bytes(1000, k));
            Seg dup = Assert.Single(G.Segments(_sink));
            Assert.Equal((3001u, first.Window), (dup.Ack, dup.Window)); // RFC 5681 §2: a duplicate, window unchanged
        }
        Send(iss, 3001, Bytes(1000, 2));
        Seg ack = Assert.Single(G.Segments(_sink));
        Assert.Equal(8001u, ack.Ack);
        Assert.Equal(((512 * 1024) - 5000) >> 4, ack.Window); // with the hole filled, the buffer's real room again (scale 16)
        byte[] got = ReadAll(c, _now);
        Assert.Equal(Enumerable.Range(2, 5).SelectMany(k => Bytes(1000, k)).ToArray(), got);
    }

    [Fact]
    public void HeldBytesStayInsideTheAdvertisedWindow()
    {
        (TcpSocket c, uint iss) = Open();
        // The SYN-ACK offered 65535 (a SYN's window is never scaled), so the edge is 1001 + 65535 at first.
        Send(iss, 1001 + 65_000, Bytes(1000, 1)); // straddles the edge: only 535 bytes are held
        Seg dup = Assert.Single(G.Segments(_sink));
        SackBlocks b = SackOf(dup);
        Assert.Equal((1001u + 65_000, 1001u + 65_535), (b.Left(0), b.Right(0)));
        // That ACK opened the window to the 512 KiB buffer (scaled by 16); its edge bounds what is held next.
        Assert.Equal(512 * 1024 / 16, dup.Window);
        Send(iss, 1001 + (512 * 1024) - 10, Bytes(100, 2));
        Seg dup2 = Assert.Single(G.Segments(_sink));
        b = SackOf(dup2);
        Assert.Equal(2, b.Count);
        Assert.Equal((1001u + (512 * 1024) - 10, 1001u + (512 * 1024)), (b.Left(0), b.Right(0)));
        Assert.Equal(dup.Window, dup2.Window);
        Send(iss, 1001 + (512 * 1024), Bytes(10, 3)); // wholly past it: not acceptable, an ACK and nothing held
        Seg again = Assert.Single(G.Segments(_sink));
        Assert.Equal(2, SackOf(again).Count);
        Assert.Equal(0, c.Readable);
    }

    [Fact]
    public void BytesHeldPastTheGuestsFinAreNotDelivered()
    {
        (TcpSocket c, uint iss) = Open();
        Send(iss, 2001, Bytes(100, 1)); // held past a hole at 1001
        G.Segments(_sink);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack | TcpFlags.Fin, 60000, payload: Bytes(50, 2)), _now);
        // A FIN at 1051 with bytes held at 2001: the stream ends at the FIN; the queue's bytes never reach the host.
        Assert.True(c.GuestFinished);
        Assert.Equal(Bytes(50, 2), ReadAll(c, _now));
    }

    [Fact]
    public void SackedDuplicateAcksTriggerFastRetransmitThoughTheirWindowGrows()
    {
        // An offloading link: each Write leaves as one large segment that the link cuts at the MSS.
        _gw = new Gateway(new GatewayOptions { IsnSecret = 42, SegmentationOffload = TcpOffload.Ipv4 }, _sink, _flows);
        (TcpSocket c, uint iss) = Open();
        c.Write(new byte[4000], _now);
        c.Write(new byte[4000], _now);
        Assert.Equal(new[] { 4000, 4000 }, G.Segments(_sink).Select(x => x.Payload.Length).ToArray());
        // The guest lost the first; its reader opens the window on every duplicate, each SACKing more of the second.
        for (int i = 1; i <= 3; i++)
        {
            _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack, (ushort)(60000 + (i * 100)), rawOptions: SackOption(iss + 4001, iss + 4001 + (uint)(i * 1000))), _now);
        }
        Seg re = Assert.Single(G.Segments(_sink));
        Assert.Equal(iss + 1, re.Seq); // RFC 6675 §2's DupAck: a SACK of new data, whatever the window
        Assert.Equal(4000, re.Payload.Length); // the whole hole, up to the first SACKed byte, in one segment
        Assert.Equal(1, _gw.Counters.TcpRetransmits);
    }

    private static byte[] SackOption(uint left, uint right)
    {
        var b = new SackBlocks();
        b.Add(left, right);
        byte[] o = new byte[b.WriteLength];
        b.Write(o);
        return o;
    }

    [Fact]
    public void SackBlocksOutsideWhatWasSentOrMalformedChangeNothing()
    {
        (TcpSocket c, uint iss) = Open();
        c.Write(new byte[3000], _now);
        G.Segments(_sink);
        byte[][] hostile =
        [
            SackOption(iss + 100_000, iss + 100_500),                // past anything sent
            SackOption(iss + 2001, iss + 1001),                      // right edge before left
            [1, 1, 5, 9, 0, 0, 0, 0, 0, 0, 0, 0],                    // a bad length
            [1, 1, 5, 34, 0, 0, 0, 0, 0, 0, 0, 0],                   // runs past the options
        ];
        foreach (byte[] o in hostile)
        {
            _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 1, TcpFlags.Ack, 60000, rawOptions: o), _now);
        }
        // Three ACKs that repeat SND.UNA with an unchanged window are ordinary duplicates; the SACK garbage adds nothing.
        Seg re = Assert.Single(G.Segments(_sink));
        Assert.Equal(iss + 1, re.Seq);
        Assert.Equal(1000, re.Payload.Length);
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, iss + 3001, TcpFlags.Ack, 60000), _now);
        Assert.Equal(TcpState.Established, c.State);
        Assert.Equal(512 * 1024, c.Writable);
    }
}
