using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>
/// RFC 8985 §7 tail-loss probe and RFC 6675 §4's IsLost through the gateway, on an offloading link where a Write leaves
/// as one large frame: a lost last frame has nothing behind it to draw duplicate ACKs, so only the probe (or the
/// 200 ms timer) can bring an answer back.
/// </summary>
public sealed class TcpLossProbeTests
{
    private const ushort Window = 60000;
    private readonly CapturingSink _sink = new();
    private readonly RecordingFlows _flows = new();
    private readonly Gateway _gw;
    private long _now = 1000;

    public TcpLossProbeTests() =>
        _gw = new Gateway(new GatewayOptions { IsnSecret = 42, SegmentationOffload = TcpOffload.Ipv4 }, _sink, _flows);

    /// <summary>An established connection (guest MSS 1000, SACK) with one RTT sample of 2 ms taken: SRTT 2, RTO 200.</summary>
    private (TcpSocket C, uint Una) Open(bool sack = true)
    {
        var opts = new TcpOptions { Mss = 1000, WindowScale = 0, SackPermitted = sack };
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1000, 0, TcpFlags.Syn, 65535, options: opts), _now);
        TcpSocket c = _flows.ConnectRequests[^1];
        Assert.True(c.CompleteConnect(connected: true, _now));
        uint iss = Assert.Single(G.Segments(_sink)).Seq;
        Ack(iss + 1);
        c.Write(new byte[1000], _now);
        Assert.Single(G.Segments(_sink));
        _now += 2;
        Ack(iss + 1001);
        Assert.Equal(2, c.SmoothedRtt);
        Assert.Equal(long.MaxValue, c.NextDeadline); // nothing outstanding: no probe, no RTO
        return (c, iss + 1001);
    }

    private void Ack(uint ack, byte[]? sack = null) =>
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1001, ack, TcpFlags.Ack, Window, rawOptions: sack), _now);

    [Fact]
    public void ALostLastFrameIsResentByTheProbeAtPtoNotAtRto()
    {
        (TcpSocket c, uint una) = Open();
        c.Write(new byte[8000], _now);
        Seg lost = Assert.Single(G.Segments(_sink)); // one offloaded frame: the whole tail
        Assert.Equal(8000, lost.Payload.Length);
        long pto = c.NextDeadline;
        Assert.Equal(_now + 10, pto); // max(2*SRTT, 10 ms floor); more than one segment out, so no delayed-ACK allowance
        _gw.OnTimer(pto - 1);
        Assert.Empty(G.Segments(_sink));
        _gw.OnTimer(pto);
        Seg probe = Assert.Single(G.Segments(_sink));
        Assert.Equal((una, 8000), (probe.Seq, probe.Payload.Length)); // the last segment again, its whole frame
        Assert.Equal(1, _gw.Counters.TcpRetransmits);
        Assert.Equal(pto + 200, c.NextDeadline); // the RTO restarted behind the probe, not backed off
    }

    [Fact]
    public void AnAnsweredProbeLeavesCwndAsItWas()
    {
        (TcpSocket c, uint una) = Open();
        c.Write(new byte[8000], _now);
        G.Segments(_sink);
        _now = c.NextDeadline;
        _gw.OnTimer(_now);
        Assert.Single(G.Segments(_sink));
        _now += 2;
        Ack(una + 8000);
        Assert.Equal(long.MaxValue, c.NextDeadline);
        // Slow start went on (IW 10 MSS + 1 + 8 acknowledged segments' worth): after a timeout it would be one MSS.
        c.Write(new byte[100_000], _now);
        int sent = G.Segments(_sink).Sum(s => s.Payload.Length);
        Assert.True(sent > 10 * 1000, $"sent {sent} bytes");
        Assert.Equal(1, _gw.Counters.TcpRetransmits);
    }

    [Fact]
    public void TheRtoStillFiresWhenTheProbeIsLostTooAndBacksOff()
    {
        (TcpSocket c, uint una) = Open();
        c.Write(new byte[8000], _now);
        G.Segments(_sink);
        long pto = c.NextDeadline;
        _gw.OnTimer(pto);
        Assert.Single(G.Segments(_sink)); // the probe, lost as well
        Assert.Equal(pto + 200, c.NextDeadline);
        _gw.OnTimer(pto + 200);
        Seg again = Assert.Single(G.Segments(_sink));
        Assert.Equal((una, 1000), (again.Seq, again.Payload.Length)); // RFC 5681 §3.1: one segment after a timeout
        Assert.Equal(2, _gw.Counters.TcpRetransmits);
        Assert.Equal(pto + 200 + 400, c.NextDeadline); // RFC 6298 §5.5 back-off; no second probe in the episode
    }

    [Fact]
    public void OneSegmentOutWaitsForTheGuestsDelayedAckSoTheRtoComesFirst()
    {
        (TcpSocket c, _) = Open();
        c.Write(new byte[500], _now);
        Assert.Single(G.Segments(_sink));
        // PTO would be 10 + 200 ms (the guest may hold the ACK of a lone segment), later than the 200 ms RTO.
        Assert.Equal(_now + 200, c.NextDeadline);
    }

    [Fact]
    public void NoProbeBeforeAnRttSample()
    {
        var opts = new TcpOptions { Mss = 1000, WindowScale = 0, SackPermitted = true };
        _gw.Receive(G.Tcp(G.Remote, 40000, 80, 1000, 0, TcpFlags.Syn, 65535, options: opts), _now);
        TcpSocket c = _flows.ConnectRequests[^1];
        c.CompleteConnect(connected: true, _now);
        uint iss = Assert.Single(G.Segments(_sink)).Seq;
        Ack(iss + 1);
        c.Write(new byte[8000], _now);
        Assert.Single(G.Segments(_sink));
        Assert.Equal(_now + 1000, c.NextDeadline); // RFC 6298 §2.1's initial RTO only
    }

    [Fact]
    public void ASackPastALostFrameStartsFastRecoveryAtOnce()
    {
        (TcpSocket c, uint una) = Open();
        c.Write(new byte[4000], _now);
        c.Write(new byte[4000], _now);
        Assert.Equal(2, G.Segments(_sink).Count);
        // The first frame is lost; the guest SACKs the second: one duplicate, but 4000 bytes (> 2 MSS) above the hole.
        _now += 2;
        Ack(una, SackOption(una + 4000, una + 8000));
        Seg re = Assert.Single(G.Segments(_sink));
        Assert.Equal((una, 4000), (re.Seq, re.Payload.Length));
        Assert.Equal(1, _gw.Counters.TcpRetransmits);
    }

    [Fact]
    public void ASackOfTwoMssOrLessWaitsForMoreDuplicates()
    {
        (TcpSocket c, uint una) = Open();
        c.Write(new byte[4000], _now);
        c.Write(new byte[2000], _now);
        Assert.Equal(2, G.Segments(_sink).Count);
        _now += 2;
        Ack(una, SackOption(una + 4000, una + 6000)); // possibly reordering: RFC 6675 §4 needs more than (3-1) MSS
        Assert.Empty(G.Segments(_sink));
        Assert.Equal(0, _gw.Counters.TcpRetransmits);
    }

    [Fact]
    public void ADuplicateWithoutSackBlocksIsNotJudgedByAnEarlierAcksSack()
    {
        (TcpSocket c, uint una) = Open();
        c.Write(new byte[4000], _now);
        c.Write(new byte[4000], _now);
        G.Segments(_sink);
        Ack(una, SackOption(una + 4000, una + 8000));
        Assert.Single(G.Segments(_sink));
        Ack(una + 8000); // recovery ends
        c.Write(new byte[8000], _now);
        Assert.NotEmpty(G.Segments(_sink)); // as much as the halved cwnd allows
        Ack(una + 8000); // one plain duplicate: not three, and it SACKs nothing
        Assert.DoesNotContain(G.Segments(_sink), x => x.Seq == una + 8000); // (RFC 3042 may let new data out)
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
}
