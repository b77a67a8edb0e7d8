using Kit.Buffers;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>RFC 9293 §3.3.2 states, plus Connecting: a SYN seen, the host connect still in flight.</summary>
internal enum TcpState
{
    Connecting,
    SynSent,
    SynReceived,
    Established,
    FinWait1,
    FinWait2,
    CloseWait,
    Closing,
    LastAck,
    TimeWait,
    Closed,
}

/// <summary>
/// A TCP 4-tuple as the guest sees it, for either family (<see cref="IpAddr"/>: IPv4 is IPv4-mapped), so one table
/// holds both. 36 bytes to hash instead of 12 costs nothing next to the segment it finds.
/// </summary>
internal readonly struct FlowKey(IpAddr guestIp, ushort guestPort, IpAddr remoteIp, ushort remotePort) : IEquatable<FlowKey>
{
    public readonly UInt128 Guest = guestIp.Value;
    public readonly UInt128 Remote = remoteIp.Value;
    public readonly uint Ports = ((uint)guestPort << 16) | remotePort;

    public bool Equals(FlowKey other) => Guest == other.Guest && Remote == other.Remote && Ports == other.Ports;
    public override bool Equals(object? obj) => obj is FlowKey k && Equals(k);
    public override int GetHashCode() => HashCode.Combine(Guest, Remote, Ports);
}

/// <summary>
/// One guest TCP connection terminated by the gateway (RFC 9293), in the shape of smoltcp's <c>socket/tcp.rs</c>: the
/// socket owns its transmission control block (§3.3.1), its two bounded buffers, its state machine and its timers.
/// The gateway (<see cref="ITcpSocketHost"/>) only finds the socket for a segment, puts the segments it dispatches on
/// the wire, and keeps the table. Connect-before-accept: a passive open waits in <see cref="TcpState.Connecting"/>
/// until the NAT reports the host connect (<see cref="CompleteConnect"/>); only then does the SYN-ACK go out.
/// Receiving, segments past a hole wait in a bounded out-of-order queue (<see cref="TcpOutOfOrderQueue"/>) and the
/// ACKs report them with SACK (RFC 2018) when the guest offered it; so loss (a policy's loss_pct, or a real lossy link
/// behind a TAP) costs one retransmission, not a window. Sending, the guest's SACK blocks count duplicate ACKs as RFC
/// 6675 §2 does and bound the first retransmission; there is no scoreboard beyond that.
/// Not implemented on purpose: timestamps (the link is a virtual wire: RTT is tiny), urgent data.
/// Congestion control is NewReno (RFC 5681, RFC 6582) with limited transmit (RFC 3042) and early retransmit (RFC 5827):
/// slow start, halving on fast retransmit, a partial ACK in fast
/// recovery resends the next hole at once, one MSS after a timeout.
/// Only the engine's thread touches it, under the driver's lock; the NAT reads its public properties and calls its
/// host-side methods (<see cref="Peek"/>, <see cref="Write"/> ...) under the same lock.
/// </summary>
internal sealed class TcpSocket
{
    private const int MinRto = 200;      // Linux's floor; RFC 6298 §2.4 says 1 s but the link is a local wire.
    private const int MaxRto = 60_000;   // RFC 6298 §2.5.
    private const int InitialRto = 1000; // RFC 6298 §2.1.
    private const int MaxRetries = 12;
    private const int MaxSynRetries = 6;
    private const int DelayedAckMs = 20;
    private const int TimeWaitMs = 2000; // 2*MSL on a virtual wire; segments cannot linger in a network.
    /// <summary>RFC 8985 §7.2's PTO floor: the wire is a local one, its RTT well under a millisecond and steady.</summary>
    private const int MinPto = 10;
    /// <summary>RFC 8985 §7.2 WCDelAckT: the guest's worst-case delayed ACK (Linux's TCP_DELACK_MAX, RFC 1122's 200 ms).</summary>
    private const int WorstDelayedAckMs = 200;

    private readonly ITcpSocketHost _host;
    private readonly ByteRing _send;
    private readonly ByteRing _receive;
    private long _now;

    // Send sequence space (RFC 9293 §3.3.1).
    private uint _iss;
    private uint _sndUna;
    private uint _sndNxt;
    /// <summary>
    /// The highest sequence number sent (SND.MAX, as RFC 9293 implementations keep it): after a retransmission timeout
    /// rewinds <see cref="_sndNxt"/> (go back N), the guest may still acknowledge bytes sent before the rewind, and
    /// such an ACK is acceptable, not "something not yet sent".
    /// </summary>
    private uint _sndMax;
    /// <summary>Sequence number of the first byte in the send buffer.</summary>
    private uint _sendBase;
    private uint _sndWnd;
    private uint _sndWl1;
    private uint _sndWl2;
    private uint _maxSndWnd;
    private int _sndShift;
    private bool _scaling;
    private uint _cwnd;
    private uint _ssthresh = uint.MaxValue;
    private int _dupAcks;
    /// <summary>RFC 6582 fast recovery: in it until <see cref="_recover"/> (SND.MAX when it began) is acknowledged.</summary>
    private bool _inRecovery;
    private uint _recover;
    private bool _finQueued;
    private bool _finSent;
    private uint _finSeq;

    // Receive sequence space.
    private uint _irs;
    private uint _rcvNxt;
    private int _rcvShift;
    private uint _lastAdvertisedEdge;
    private uint _lastAckSent;
    private int _segmentsSinceAck;
    private bool _wantWritable;
    /// <summary>The host said more bytes follow at once: a short last segment waits for them.</summary>
    private bool _holdTail;
    /// <summary>A zero-window probe is outstanding.</summary>
    private bool _probing;
    /// <summary>Both ends sent SACK-permitted (RFC 2018 §2): ACKs carry SACK blocks, the guest's are read.</summary>
    private bool _sackOk;
    /// <summary>Segments past a hole, held until it fills (created on the first one).</summary>
    private TcpOutOfOrderQueue? _ooo;
    /// <summary>The last ACK went out while bytes were held past a hole: duplicates of it repeat its window.</summary>
    private bool _windowHeld;
    /// <summary>
    /// Sending: the highest right edge the guest has SACKed above SND.UNA (equal to SND.UNA when none), and the lowest
    /// left edge in its latest SACK (where the first hole ends), for RFC 6675 §2's DupAck and the retransmission's size.
    /// </summary>
    private uint _sackHigh;
    private uint _holeEnd;
    /// <summary>Bytes the guest's latest ACK SACKed above SND.UNA (RFC 6675 §4 IsLost counts them).</summary>
    private uint _sackedBytes;

    // Timers (absolute ms, 0 = off) and RFC 6298 state.
    private long _rtoDeadline;
    /// <summary>RFC 8985 §7 tail-loss probe timer, and whether this episode's one probe went (until SND.UNA advances).</summary>
    private long _ptoDeadline;
    private bool _probeSent;
    private long _persistDeadline;
    private long _delayedAckDeadline;
    private long _timeWaitDeadline;
    private int _rto = InitialRto;
    private int _backoff;
    private int _srtt;
    private int _rttVar;
    private uint _rttSeq;
    private long _rttStart;
    private bool _rttTiming;
    private int _retries;

    /// <summary>The flow's loss_pct (null: none), asked by the gateway at dispatch and on transmit.</summary>
    public ISegmentLoss? Loss { get; set; }

    private TcpSocket(ITcpSocketHost host, FlowKey key, IpAddr guestIp, ushort guestPort, IpAddr remoteIp, ushort remotePort, MacAddress guestMac, int bufferSize)
    {
        _host = host;
        Key = key;
        GuestIp = guestIp;
        GuestPort = guestPort;
        RemoteIp = remoteIp;
        RemotePort = remotePort;
        GuestMac = guestMac;
        _send = ByteRing.Pooled(bufferSize);
        _receive = ByteRing.Pooled(bufferSize);
    }

    internal readonly FlowKey Key;
    public IpAddr GuestIp { get; }
    public ushort GuestPort { get; }
    public IpAddr RemoteIp { get; }
    public ushort RemotePort { get; }
    internal MacAddress GuestMac;

    public TcpState State { get; private set; }
    /// <summary>Set for the NAT's own use (its socket and pumps).</summary>
    public object? Tag { get; set; }
    public bool GuestFinished { get; private set; }
    public bool IsReset { get; private set; }
    /// <summary>Out of the gateway's table: no segment reaches it any more.</summary>
    public bool Removed { get; private set; }
    /// <summary>A passive open whose host connect has not reported yet (the gateway's connects-in-flight bound).</summary>
    internal bool ConnectPending { get; set; }
    /// <summary>The MSS the guest accepts (RFC 9293 §3.7.1): the gateway cuts offloaded segments at it.</summary>
    internal int SendMss { get; private set; }

    /// <summary>Bytes the guest has sent that the host has not read yet.</summary>
    public int Readable => _receive.Count;

    /// <summary>Room for host data right now.</summary>
    public int Writable => _finQueued || IsReset ? 0 : _send.Free;

    /// <summary>
    /// Host data may be queued now. False once the host closed its writing side, or the engine may no longer carry
    /// data for it. In SYN-RECEIVED (the host connect succeeded, the guest's ACK is not in yet) data is queued and
    /// leaves when the handshake completes, so a server that speaks first (a banner) loses nothing.
    /// </summary>
    public bool CanWrite => !_finQueued && !IsReset && !Removed && State is TcpState.Established or TcpState.CloseWait or TcpState.SynReceived;

    /// <summary>The earliest of the socket's timers (absolute ms), or long.MaxValue when none runs.</summary>
    internal long NextDeadline => Min(long.MaxValue, _delayedAckDeadline, _rtoDeadline, _ptoDeadline, _persistDeadline, _timeWaitDeadline);

    internal bool HasTimers => _delayedAckDeadline != 0 || _rtoDeadline != 0 || _ptoDeadline != 0 || _persistDeadline != 0 || _timeWaitDeadline != 0;

    /// <summary>Our MSS (RFC 9293 §3.7.1): the host's is for IPv4; an IPv6 header is 20 bytes longer (RFC 8200 §8.3).</summary>
    private int OurMss => GuestIp.IsV4 ? _host.Mss : _host.Mss - 20;

    private static bool Lt(uint a, uint b) => (int)(a - b) < 0;
    private static bool Le(uint a, uint b) => (int)(a - b) <= 0;

    // ---- Opening ----

    /// <summary>A guest SYN (RFC 9293 §3.10.7.2) for a new flow: the socket waits for the host connect.</summary>
    internal static TcpSocket Listen(ITcpSocketHost host, FlowKey key, MacAddress mac, IpAddr src, IpAddr dst, TcpSegment syn, uint iss, int bufferSize)
    {
        var c = new TcpSocket(host, key, src, syn.SourcePort, dst, syn.DestinationPort, mac, bufferSize)
        {
            _irs = syn.Sequence,
            _iss = iss,
            _sndUna = iss,
            _sndNxt = iss,
            _sndMax = iss,
            _sendBase = iss + 1,
            // RFC 7323 §2.2: the window in a SYN is never scaled.
            _sndWnd = syn.Window,
            _sndWl1 = syn.Sequence,
            State = TcpState.Connecting,
        };
        c._rcvNxt = c._irs + 1;
        c._lastAckSent = c._rcvNxt;
        c._lastAdvertisedEdge = c._rcvNxt;
        c.NegotiateOptions(syn.Options);
        return c;
    }

    /// <summary>An active open to a guest (port publishing): the SYN goes out now, or once the guest answers ARP.</summary>
    internal static TcpSocket Connect(ITcpSocketHost host, FlowKey key, MacAddress mac, IpAddr guestIp, ushort guestPort, IpAddr sourceIp, ushort sourcePort,
        uint iss, int bufferSize, long now)
    {
        var c = new TcpSocket(host, key, guestIp, guestPort, sourceIp, sourcePort, mac, bufferSize)
        {
            _now = now,
            _iss = iss,
            _sndUna = iss,
            _sndNxt = iss,
            _sndMax = iss,
            _sendBase = iss + 1,
            _rcvShift = ShiftFor(bufferSize),
            SendMss = 536,
            State = TcpState.SynSent,
        };
        return c;
    }

    /// <summary>Sends the first SYN of an active open, or waits for the guest's address (the RTO retries both).</summary>
    internal void SendFirstSyn(long now)
    {
        _now = now;
        if (GuestMac == MacAddress.Zero)
        {
            _host.RequestAddress(GuestIp);
            _sndNxt = _iss + 1;
            ArmRto();
        }
        else
        {
            SendSyn(TcpFlags.Syn);
        }
    }

    private void NegotiateOptions(TcpOptions opts)
    {
        // RFC 9293 §3.7.1: 536 when the peer sent no MSS; never more than our MTU allows.
        SendMss = Math.Max(Math.Min(opts.Mss == 0 ? 536 : opts.Mss, OurMss), 64);
        // RFC 7323 §2.2: scaling is on only if both sides send the option.
        _scaling = opts.WindowScale >= 0;
        _sndShift = _scaling ? opts.WindowScale : 0;
        _rcvShift = _scaling ? ShiftFor(_receive.Capacity) : 0;
        // RFC 2018 §2: SACK-permitted in a SYN-ACK only if the SYN had it; in an active open our SYN offers it.
        _sackOk = opts.SackPermitted;
        _cwnd = (uint)(10 * SendMss); // RFC 6928 initial window.
    }

    private static int ShiftFor(int buffer)
    {
        int s = 0;
        while ((buffer >> s) > 65535 && s < 14)
        {
            s++;
        }
        return s;
    }

    /// <summary>
    /// The NAT reports the host connect's outcome: SYN-ACK on success, RST on failure. <paramref name="silent"/>: no
    /// answer at all (a policy's deny: the guest's SYN is dropped, as a firewall drops it, and its retransmission is a
    /// new request).
    /// </summary>
    public bool CompleteConnect(bool connected, long now, bool silent = false)
    {
        _now = now;
        if (State != TcpState.Connecting || Removed)
        {
            return false;
        }
        _host.ConnectFinished(this);
        if (!connected)
        {
            // Refused: RST+ACK for the SYN, so the guest's connect fails with ECONNREFUSED.
            if (!silent)
            {
                SendBare(this, 0, _rcvNxt, TcpFlags.Rst | TcpFlags.Ack);
            }
            IsReset = true;
            Close();
            return false;
        }
        State = TcpState.SynReceived;
        SendSyn(TcpFlags.Syn | TcpFlags.Ack);
        return true;
    }

    private void SendSyn(TcpFlags flags)
    {
        _sndNxt = _iss + 1;
        Dispatch(_iss, flags, 0, 0, synOptions: true);
        ArmRto();
    }

    // ---- Segment arrival (RFC 9293 §3.10.7) ----

    internal void Process(TcpSegment seg, long now)
    {
        _now = now;
        SegmentsReceived++;
        TcpFlags f = seg.Flags;
        uint seq = seg.Sequence;
        ReadOnlySpan<byte> payload = seg.Payload;
        switch (State)
        {
            case TcpState.Connecting:
                if ((f & TcpFlags.Rst) != 0 && seq == _rcvNxt)
                {
                    Reset(sendRst: false);
                }
                return; // A retransmitted SYN while the host connect is pending is ignored (vpnkit does the same).
            case TcpState.SynSent:
                ProcessSynSent(seg);
                return;
            case TcpState.Closed:
                return;
        }

        // §3.10.7.4, first: is the segment acceptable?
        uint segLen = (uint)payload.Length + ((f & TcpFlags.Fin) != 0 ? 1u : 0);
        uint edge = Lt(_lastAdvertisedEdge, _rcvNxt) ? _rcvNxt : _lastAdvertisedEdge;
        bool acceptable = seq == _rcvNxt
            || (Lt(_rcvNxt, seq) && Lt(seq, edge))
            || (Lt(seq, _rcvNxt) && Lt(_rcvNxt, seq + segLen));
        if (!acceptable)
        {
            if ((f & TcpFlags.Rst) == 0)
            {
                SendAck();
            }
            return;
        }

        // Second: RST. RFC 5961 §3.2: only an exact match resets; an in-window one gets a challenge ACK.
        if ((f & TcpFlags.Rst) != 0)
        {
            if (seq == _rcvNxt)
            {
                Reset(sendRst: false);
            }
            else
            {
                SendAck();
            }
            return;
        }

        // Fourth: SYN. A retransmitted SYN in SYN-RECEIVED means our SYN-ACK was lost; otherwise challenge (RFC 5961 §4).
        if ((f & TcpFlags.Syn) != 0)
        {
            if (State == TcpState.SynReceived && seq == _irs)
            {
                SendSyn(TcpFlags.Syn | TcpFlags.Ack);
            }
            else
            {
                SendAck();
            }
            return;
        }

        // Fifth: ACK.
        if ((f & TcpFlags.Ack) == 0)
        {
            return;
        }
        uint ack = seg.Acknowledgment;
        if (State == TcpState.SynReceived)
        {
            if (Lt(_sndUna, ack) && Le(ack, _sndNxt))
            {
                State = TcpState.Established;
                _sndUna = ack;
                _sndWnd = (uint)seg.Window << _sndShift;
                _maxSndWnd = _sndWnd;
                _sndWl1 = seq;
                _sndWl2 = ack;
                _rtoDeadline = 0;
                _retries = 0;
                _rto = InitialRto;
            }
            else
            {
                SendBare(this, ack, 0, TcpFlags.Rst);
                return;
            }
        }
        if (Lt(_sndMax, ack))
        {
            SendAck(); // Acknowledges something not yet sent.
            return;
        }
        if (!ProcessAck(seg, seq, ack, payload.Length, f))
        {
            return; // Connection finished.
        }

        // Seventh: segment text.
        bool ackNow = false;
        bool allTaken = true;
        if (payload.Length > 0 && State is TcpState.Established or TcpState.FinWait1 or TcpState.FinWait2)
        {
            if (Lt(seq, _rcvNxt))
            {
                int skip = (int)(_rcvNxt - seq);
                payload = skip >= payload.Length ? default : payload.Slice(skip);
                seq = _rcvNxt;
            }
            if (seq != _rcvNxt)
            {
                // Out of order: held (unless the guest already sent its FIN: nothing follows a FIN), and ACKed at once
                // (RFC 5681 §4.2), a duplicate ACK with SACK blocks, so the guest's fast retransmit fills the hole.
                _host.Counters.TcpOutOfOrder++;
                if (!GuestFinished)
                {
                    Hold(seq, payload);
                }
                SendAck();
                return;
            }
            int n = _receive.Write(payload);
            _rcvNxt += (uint)n;
            allTaken = n == payload.Length;
            bool filled = false;
            if (_ooo is { IsEmpty: false } && allTaken)
            {
                // The hole (or part of it) is filled: what was held after it follows, all of it (Hold kept it within
                // RCV.NXT + the buffer's free room, a sum that taking bytes in order does not change). RFC 5681 §4.2:
                // ACK at once.
                uint before = _rcvNxt;
                _rcvNxt = _ooo.Drain(_rcvNxt, _receive);
                n += (int)(_rcvNxt - before);
                filled = true;
            }
            if (n > 0)
            {
                _host.Flows.TcpReadable(this);
                _segmentsSinceAck++;
            }
            // RFC 9293 §3.8.6.3 / RFC 1122 §4.2.3.2: ACK at least every second full segment, a full buffer at once,
            // otherwise within DelayedAckMs. PSH does not force an ACK: a request's answer usually comes from the host
            // well within the delay and carries the ACK, which saves a frame (and a wake-up of the guest) per round trip.
            ackNow = !allTaken || filled || _segmentsSinceAck >= 2;
            if (!ackNow)
            {
                ArmDelayedAck();
            }
        }

        // Eighth: FIN, once everything before it has been taken.
        if ((f & TcpFlags.Fin) != 0 && allTaken && seq + (uint)payload.Length == _rcvNxt && !GuestFinished)
        {
            _rcvNxt++;
            GuestFinished = true;
            _ooo?.Clear(); // Bytes held past the FIN were never part of the stream.
            if (State is TcpState.Established or TcpState.SynReceived)
            {
                // The FIN's ACK is delayed, as Linux's tcp_fin() does (pingpong mode): the FIN goes on to the host
                // socket as shutdown(2), and a host that closes in turn answers within the delay, so its FIN carries
                // the ACK (one frame to the guest instead of two per connection). A host that keeps talking
                // (half-close) sends the ACK with its data, or the timer sends it (RFC 1122 §4.2.3.2).
                ArmDelayedAck();
            }
            else
            {
                ackNow = true;
            }
            switch (State)
            {
                case TcpState.Established:
                case TcpState.SynReceived:
                    State = TcpState.CloseWait;
                    break;
                case TcpState.FinWait1:
                    State = TcpState.Closing;
                    break;
                case TcpState.FinWait2:
                    EnterTimeWait();
                    break;
            }
            _host.Flows.TcpReadable(this);
        }
        else if ((f & TcpFlags.Fin) != 0 && GuestFinished)
        {
            ackNow = true; // A retransmitted FIN: our ACK was lost.
            if (State == TcpState.TimeWait)
            {
                EnterTimeWait();
            }
        }

        TrySend();
        if (ackNow && (_lastAckSent != _rcvNxt || (f & TcpFlags.Fin) != 0))
        {
            SendAck();
        }
    }

    /// <summary>
    /// Holds an out-of-order segment's bytes inside the window last advertised and within what the receive buffer can
    /// take once the hole fills (its free room only grows while RCV.NXT waits at the hole).
    /// </summary>
    private void Hold(uint seq, ReadOnlySpan<byte> payload)
    {
        _ooo ??= new TcpOutOfOrderQueue(_receive.Capacity);
        uint edge = _lastAdvertisedEdge;
        uint room = _rcvNxt + (uint)_receive.Free;
        if (Lt(room, edge))
        {
            edge = room;
        }
        if (_ooo.Insert(_rcvNxt, edge, seq, payload) == OutOfOrderResult.Full)
        {
            _host.Counters.TcpOutOfOrderFull++;
        }
    }

    /// <summary>
    /// Reads the guest's SACK blocks (RFC 2018 §4) on an ACK for <paramref name="ack"/>. Returns true when one reports
    /// bytes above any SACKed before: RFC 6675 §2's DupAck, which does not ask for an unchanged window (the guest's
    /// reader may open it on every ACK). Blocks outside (ack, SND.MAX] or empty are ignored (a D-SACK, RFC 2883, lies
    /// below the ACK; a hostile one anywhere).
    /// </summary>
    private bool ReadSack(in SackBlocks sack, uint ack)
    {
        if (!Lt(ack, _sackHigh) || Lt(_sndMax, _sackHigh))
        {
            _sackHigh = ack;
        }
        bool news = false;
        bool any = false;
        uint lowest = 0;
        for (int i = 0; i < sack.Count; i++)
        {
            uint l = sack.Left(i);
            uint r = sack.Right(i);
            if (!Lt(ack, l) || !Lt(l, r) || Lt(_sndMax, r))
            {
                continue;
            }
            _sackedBytes += r - l;
            if (Lt(_sackHigh, r))
            {
                _sackHigh = r;
                news = true;
            }
            if (!any || Lt(l, lowest))
            {
                lowest = l;
                any = true;
            }
        }
        _holeEnd = any ? lowest : ack;
        return news;
    }

    /// <summary>ACK processing (RFC 9293 §3.10.7.4 fifth check). Returns false if the connection is gone.</summary>
    private bool ProcessAck(TcpSegment seg, uint seq, uint ack, int payloadLength, TcpFlags f)
    {
        uint window = (uint)seg.Window << _sndShift;
        _sackedBytes = 0; // This ACK's blocks only: one without SACK blocks says nothing is SACKed.
        bool sackNews = _sackOk && seg.HeaderLength > TcpSegment.MinHeaderLength
            && SackBlocks.TryParse(seg.OptionBytes, out SackBlocks sack) && ReadSack(sack, ack);
        if (Lt(_sndUna, ack))
        {
            uint acked = ack - _sndUna;
            int data = Lt(ack, _sendBase) ? 0 : (int)Math.Min(ack - _sendBase, (uint)_send.Count);
            _send.Consume(data);
            _sendBase += (uint)data;
            _sndUna = ack;
            if (Lt(_sndNxt, ack))
            {
                _sndNxt = ack; // The guest had bytes sent before a go-back-N rewind: go on after them.
            }
            if (_rttTiming && Le(_rttSeq, ack))
            {
                SampleRtt((int)(_now - _rttStart));
                _rttTiming = false;
            }
            bool partial = false;
            if (_inRecovery)
            {
                if (Lt(ack, _recover))
                {
                    // RFC 6582 §3.2 step 3: a partial ACK: the next hole is lost too. Resend it now rather than wait
                    // for three more duplicates or the timer, and deflate the window by what was acknowledged.
                    partial = true;
                    _cwnd = Math.Max((uint)SendMss, _cwnd > acked ? _cwnd - acked + (uint)SendMss : (uint)SendMss);
                }
                else
                {
                    _inRecovery = false; // Step 3, full acknowledgment: back to congestion avoidance at ssthresh.
                    _cwnd = Math.Max((uint)SendMss, Math.Min(_ssthresh, (_sndMax - _sndUna) + (uint)SendMss));
                }
            }
            else if (_cwnd < _ssthresh)
            {
                _cwnd += Math.Min(acked, (uint)SendMss);
            }
            else
            {
                _cwnd += Math.Max(1u, (uint)(SendMss * SendMss) / Math.Max(_cwnd, 1u));
            }
            _dupAcks = 0;
            _backoff = 0;
            _retries = 0;
            _probeSent = false; // Progress: the next tail may be probed again (RFC 8985 §7.4's episode ends).
            if (partial && _sndUna != _sndNxt)
            {
                RetransmitFirst();
            }
            else if (_sndUna == _sndNxt)
            {
                _rtoDeadline = 0;
                _ptoDeadline = 0;
            }
            else
            {
                ArmRto();
                ArmLossProbe(); // RFC 8985 §7.2: restart the PTO on an ACK that advances SND.UNA.
            }
            if (_wantWritable && _send.Free >= _send.Capacity / 4)
            {
                _wantWritable = false;
                _host.Flows.TcpWritable(this);
            }
        }
        else if (ack == _sndUna)
        {
            _retries = 0;
            bool duplicate = payloadLength == 0 && (f & TcpFlags.Fin) == 0 && window == _sndWnd;
            if ((duplicate || sackNews) && _sndNxt != _sndUna)
            {
                // RFC 5681 §3.2: the third duplicate ACK triggers fast retransmit (RFC 6582 §3.2 step 2: not again
                // inside the recovery it began); each further duplicate inflates the window by the segment that left.
                // With a small flight there are not three segments left to be duplicated: RFC 3042's limited transmit
                // lets a new segment out for each of the first two duplicates, and RFC 5827's early retransmit lowers
                // the threshold when nothing new can go, so a loss there does not wait for the 200 ms timer.
                // RFC 6675 §4 IsLost: more than (DupThresh - 1) * SMSS bytes SACKed above the hole also mean it is lost;
                // one SACK for an offloaded frame past a lost one (often the tail-loss probe's) covers dozens of MSS.
                ++_dupAcks;
                bool lostBySack = _sackOk && _sackedBytes > (uint)(2 * SendMss);
                if (!_inRecovery && (_dupAcks >= DuplicateThreshold() || lostBySack))
                {
                    uint flight = _sndNxt - _sndUna;
                    _ssthresh = Math.Max(flight / 2, (uint)(2 * SendMss));
                    _cwnd = _ssthresh + (uint)(3 * SendMss);
                    _inRecovery = true;
                    _recover = _sndMax;
                    RetransmitFirst();
                }
                else if (_inRecovery ? _dupAcks > 3 : _dupAcks <= 2)
                {
                    _cwnd += (uint)SendMss;
                }
            }
        }

        // Window update, guarded by SND.WL1/WL2 against old segments.
        if (Lt(_sndWl1, seq) || (_sndWl1 == seq && Le(_sndWl2, ack)))
        {
            _sndWnd = window;
            _sndWl1 = seq;
            _sndWl2 = ack;
            if (window > _maxSndWnd)
            {
                _maxSndWnd = window;
            }
            if (window > 0)
            {
                _persistDeadline = 0;
                if (_probing)
                {
                    // The window opened: resend from the first unacknowledged byte (the probe may have been dropped).
                    _probing = false;
                    _sndNxt = _sndUna;
                    _rtoDeadline = 0;
                }
            }
        }

        if (_finSent && Lt(_finSeq, _sndUna))
        {
            switch (State)
            {
                case TcpState.FinWait1:
                    State = TcpState.FinWait2;
                    break;
                case TcpState.Closing:
                    EnterTimeWait();
                    break;
                case TcpState.LastAck:
                    Close();
                    return false;
            }
        }
        return true;
    }

    /// <summary>RFC 6298 §2.2-2.3 smoothed RTT and variance; RTO floored at <see cref="MinRto"/>.</summary>
    private void SampleRtt(int r)
    {
        r = Math.Max(r, 1);
        if (_srtt == 0)
        {
            _srtt = r;
            _rttVar = r / 2;
        }
        else
        {
            _rttVar = (3 * _rttVar + Math.Abs(_srtt - r)) / 4;
            _srtt = (7 * _srtt + r) / 8;
        }
        _rto = Math.Clamp(_srtt + Math.Max(1, 4 * _rttVar), MinRto, MaxRto);
    }

    /// <summary>Smoothed round-trip time in ms (RFC 6298 §2), 0 before the first sample.</summary>
    public int SmoothedRtt => _srtt;

    /// <summary>Segments from the guest dispatched to this socket, and segments it sent (the inspector's packet counts).</summary>
    public long SegmentsReceived { get; private set; }

    public long SegmentsSent { get; private set; }

    private void SendBare(TcpSocket s, uint seq, uint ack, TcpFlags flags)
    {
        SegmentsSent++;
        _host.SendBareSegment(s, seq, ack, flags);
    }

    private void ProcessSynSent(TcpSegment seg)
    {
        TcpFlags f = seg.Flags;
        uint ack = seg.Acknowledgment;
        bool hasAck = (f & TcpFlags.Ack) != 0;
        // RFC 9293 §3.10.7.3.
        if (hasAck && ack != _iss + 1)
        {
            if ((f & TcpFlags.Rst) == 0)
            {
                SendBare(this, ack, 0, TcpFlags.Rst);
            }
            return;
        }
        if ((f & TcpFlags.Rst) != 0)
        {
            if (hasAck)
            {
                Reset(sendRst: false);
            }
            return;
        }
        if ((f & TcpFlags.Syn) == 0 || !hasAck)
        {
            return; // Simultaneous open is not supported: the guest never connects to its own ephemeral port.
        }
        _irs = seg.Sequence;
        _rcvNxt = _irs + 1;
        NegotiateOptions(seg.Options);
        _sndUna = ack;
        _sndWnd = seg.Window; // Unscaled in a SYN (RFC 7323 §2.2).
        _maxSndWnd = _sndWnd;
        _sndWl1 = seg.Sequence;
        _sndWl2 = ack;
        _rtoDeadline = 0;
        _retries = 0;
        _rto = InitialRto;
        State = TcpState.Established;
        SendAck();
        _host.Flows.TcpEstablished(this);
    }

    // ---- Sending ----

    /// <summary>Sends what the windows allow; anything new (re)starts the tail-loss probe (RFC 8985 §7.2).</summary>
    private void TrySend()
    {
        uint before = _sndNxt;
        SendNew();
        if (_sndNxt != before)
        {
            ArmLossProbe();
        }
    }

    /// <summary>Sends new data up to min(peer window, cwnd), then a queued FIN.</summary>
    private void SendNew()
    {
        if (State is not (TcpState.Established or TcpState.CloseWait or TcpState.FinWait1 or TcpState.Closing or TcpState.LastAck))
        {
            return;
        }
        while (true)
        {
            uint inFlight = _sndNxt - _sndUna;
            int offset = Lt(_sndNxt, _sendBase) ? 0 : (int)Math.Min(_sndNxt - _sendBase, (uint)_send.Count);
            int unsent = _finSent && !Lt(_sndNxt, _finSeq) ? 0 : _send.Count - offset;
            uint window = Math.Min(_sndWnd, _cwnd);
            if (unsent > 0)
            {
                if (inFlight >= window)
                {
                    if (_sndWnd == 0 && inFlight == 0)
                    {
                        ArmPersist();
                    }
                    return;
                }
                // Large when the link segments this family's TCP (GatewayOptions.SegmentationOffload), else the MSS.
                int full = _host.MaxSegment(GuestIp.IsV4) is > 0 and int max ? max : SendMss;
                int n = (int)Math.Min((uint)Math.Min(unsent, full), window - inFlight);
                // RFC 9293 §3.8.6.2.1 sender SWS avoidance: no small segment while more data waits and the window is
                // what limits us, unless nothing is in flight.
                if (n < Math.Min(full, SendMss) && n < unsent && inFlight > 0 && n < _maxSndWnd / 2)
                {
                    return;
                }
                if (_holdTail && n == unsent && n < full)
                {
                    return;
                }
                TcpFlags flags = TcpFlags.Ack | (n == unsent ? TcpFlags.Psh : 0);
                Dispatch(_sndNxt, flags, offset, n, synOptions: false);
                if (!_rttTiming)
                {
                    _rttTiming = true;
                    _rttSeq = _sndNxt + (uint)n;
                    _rttStart = _now;
                }
                _sndNxt += (uint)n;
                if (_rtoDeadline == 0)
                {
                    ArmRto();
                }
                continue;
            }
            if (_finQueued && (!_finSent || _sndNxt == _finSeq))
            {
                _finSeq = _sndNxt;
                _finSent = true;
                Dispatch(_sndNxt, TcpFlags.Fin | TcpFlags.Ack, 0, 0, synOptions: false);
                _sndNxt++;
                if (State == TcpState.Established)
                {
                    State = TcpState.FinWait1;
                }
                else if (State == TcpState.CloseWait)
                {
                    State = TcpState.LastAck;
                }
                ArmRto();
            }
            return;
        }
    }

    private void RetransmitFirst()
    {
        _ptoDeadline = 0; // Loss recovery has begun: no probe inside it (RFC 8985 §7.2).
        _host.Counters.TcpRetransmits++;
        _rttTiming = false; // Karn: no sample from a retransmitted segment.
        int avail = _send.Count;
        if (avail > 0 && !Lt(_sndUna, _sendBase))
        {
            // With SACK the first hole's size is known (up to the lowest SACKed byte): resend all of it in one segment
            // (on an offloading link a lost 64 KiB frame then costs one retransmission, not one per MSS).
            int limit = SendMss;
            if (_sackOk && Lt(_sndUna, _holeEnd) && Le(_holeEnd, _sndNxt))
            {
                int full = _host.MaxSegment(GuestIp.IsV4) is > 0 and int max ? max : SendMss;
                limit = (int)Math.Min(_holeEnd - _sndUna, (uint)full);
            }
            int n = Math.Min(Math.Min(avail, limit), (int)Math.Min(_sndNxt - _sndUna, int.MaxValue));
            if (n > 0)
            {
                Dispatch(_sndUna, TcpFlags.Ack, 0, n, synOptions: false);
            }
        }
        else if (_finSent && _sndUna == _finSeq)
        {
            Dispatch(_finSeq, TcpFlags.Fin | TcpFlags.Ack, 0, 0, synOptions: false);
        }
        ArmRto();
    }

    private void SendAck() => Dispatch(_sndNxt, TcpFlags.Ack, 0, 0, synOptions: false);

    /// <summary>
    /// Duplicate ACKs that mean a loss: 3 (RFC 5681 §3.2), or RFC 5827 §3.1's early retransmit threshold (one less than
    /// the segments outstanding) when fewer than four are and no new data can be sent.
    /// </summary>
    private int DuplicateThreshold()
    {
        uint flight = _sndNxt - _sndUna;
        int outstanding = (int)Math.Min((flight + (uint)SendMss - 1) / (uint)SendMss, 4);
        int sentOffset = Lt(_sndNxt, _sendBase) ? 0 : (int)Math.Min(_sndNxt - _sendBase, (uint)_send.Count);
        bool canSendMore = _send.Count > sentOffset && flight < _sndWnd;
        return outstanding < 4 && !canSendMore ? Math.Max(1, outstanding - 1) : 3;
    }

    /// <summary>
    /// Hands one segment to the gateway: the header fields are the socket's (what it acknowledges, the window it
    /// advertises, its SYN options), the payload comes from its send buffer at <paramref name="sendOffset"/>.
    /// Nothing is sent (or recorded as sent) while the guest's MAC is unknown.
    /// </summary>
    private void Dispatch(uint seq, TcpFlags flags, int sendOffset, int length, bool synOptions)
    {
        uint end = seq + (uint)length + ((flags & (TcpFlags.Syn | TcpFlags.Fin)) != 0 ? 1u : 0u);
        if (Lt(_sndMax, end))
        {
            _sndMax = end;
        }
        if (GuestMac == MacAddress.Zero && !_host.TryResolve(GuestIp, out GuestMac))
        {
            return;
        }
        TcpOptions options = synOptions
            ? new TcpOptions
            {
                Mss = (ushort)Math.Min(OurMss, 65535),
                WindowScale = (sbyte)(State == TcpState.SynSent || _scaling ? _rcvShift : -1),
                SackPermitted = State == TcpState.SynSent || _sackOk,
            }
            : TcpOptions.None;
        // The window we advertise is the free space in the receive buffer: a slow host reader shrinks it.
        ushort win;
        if ((flags & TcpFlags.Syn) != 0)
        {
            win = (ushort)Math.Min(_receive.Free, 65535);
            _lastAdvertisedEdge = _rcvNxt + win;
        }
        else
        {
            // Advertise exactly what the buffer can take, rounded down to the scale unit. Rounding may pull the edge
            // back by less than one unit, which RFC 7323 §2.4 tells senders to expect; rounding up instead would
            // promise bytes we cannot store, and that error would accumulate from ACK to ACK.
            uint scaled = (uint)Math.Min(_receive.Free >> _rcvShift, 65535);
            if (_windowHeld && _ooo is { IsEmpty: false } && _lastAckSent == _rcvNxt && Le(_rcvNxt, _lastAdvertisedEdge))
            {
                // A duplicate ACK (bytes held past a hole) repeats the window of the ACK before it. An ACK whose window
                // differs is a window update, not a duplicate (RFC 5681 §2; Linux's tcp_ack), and the host reader
                // draining the buffer would grow it on nearly every one: a guest without SACK would then not fast-
                // retransmit and would wait for its backing-off timer. The buffer can still take that edge: its free
                // room only grows while RCV.NXT waits at the hole. (The first duplicate may still open the window: the
                // one before it may be the SYN-ACK's, at most 64 KiB.)
                scaled = Math.Min(scaled, (_lastAdvertisedEdge - _rcvNxt) >> _rcvShift);
            }
            win = (ushort)scaled;
            _lastAdvertisedEdge = _rcvNxt + (scaled << _rcvShift);
        }
        uint ack = (flags & TcpFlags.Ack) != 0 ? _rcvNxt : 0;
        if ((flags & TcpFlags.Ack) != 0)
        {
            _windowHeld = _ooo is { IsEmpty: false };
            _lastAckSent = _rcvNxt;
            _delayedAckDeadline = 0;
            _segmentsSinceAck = 0;
        }
        // SACK blocks ride on pure ACKs only (every out-of-order arrival gets one at once): on a data segment they
        // would push a full MSS of payload past the MTU (RFC 6691: options come out of the MSS).
        SackBlocks sack = _sackOk && length == 0 && (flags & (TcpFlags.Ack | TcpFlags.Syn | TcpFlags.Rst)) == TcpFlags.Ack && _ooo is { IsEmpty: false }
            ? _ooo.Sack()
            : default;
        SegmentsSent++;
        _host.Transmit(this, new TcpHeaderFields(seq, ack, flags, win, synOptions, options, sack), sendOffset, length);
    }

    /// <summary>Copies bytes of the send buffer (for <see cref="ITcpSocketHost.Transmit"/>).</summary>
    internal void CopySendBytes(int offset, Span<byte> destination) => _send.Peek(offset, destination);

    // ---- Host (NAT) side ----

    /// <summary>Moves guest bytes to the host; opens the window when it has grown enough to be worth announcing.</summary>
    public int Read(Span<byte> destination, long now)
    {
        int n = _receive.Peek(0, destination);
        Consume(n, now);
        return n;
    }

    /// <summary>
    /// Guest bytes waiting for the host, in place (the oldest contiguous run; empty when none): the caller hands them
    /// to its socket and then reports with <see cref="Consume"/> how many it took. Valid until the next engine call.
    /// </summary>
    public ReadOnlySpan<byte> Peek() => _receive.ReadableSpan();

    /// <summary>The host took <paramref name="n"/> guest bytes: they leave the buffer and the window may reopen.</summary>
    public void Consume(int n, long now)
    {
        _now = now;
        _receive.Consume(n);
        // No window update while bytes wait past a hole: the window stays as it was (Dispatch says why), and an ACK
        // that repeats it would be a duplicate the guest counts toward a fast retransmit.
        if (n > 0 && !Removed && _ooo is not { IsEmpty: false } && State is TcpState.Established or TcpState.FinWait1 or TcpState.FinWait2)
        {
            // RFC 9293 §3.8.6.2.2 receiver SWS avoidance: announce only a useful increase, and only when the
            // guest's view of the window has got small (a slow host reader shrank it). "Small" stays below the 64 KiB
            // a SYN-ACK can offer: the first bytes of every connection would otherwise cost a window update of their
            // own, though the answer that follows carries the same window.
            uint guestView = _lastAdvertisedEdge - _rcvNxt;
            uint open = (uint)((_receive.Free >> _rcvShift) << _rcvShift);
            uint small = (uint)Math.Min(_receive.Capacity / 2, Math.Max(32 * 1024, 4 * OurMss));
            if (guestView < small && open - guestView >= (uint)Math.Min(_receive.Capacity / 2, 2 * OurMss))
            {
                SendAck();
            }
        }
    }

    /// <summary>
    /// Queues host bytes for the guest; returns how many fit (the rest is back-pressure: wait for TcpWritable).
    /// <paramref name="moreFollows"/>: the host socket already holds more bytes that the caller writes next, so a
    /// short last segment is held back for them (one full segment instead of a full one and a sliver per read).
    /// Only a caller that will write again promptly may say so; any write without it sends what is held.
    /// </summary>
    public int Write(ReadOnlySpan<byte> data, long now, bool moreFollows = false)
    {
        _now = now;
        if (!CanWrite)
        {
            return 0;
        }
        _holdTail = moreFollows;
        int n = _send.Write(data);
        if (n < data.Length || _send.Free == 0)
        {
            // Full (a caller that reads the host only as far as there is room fills it exactly): say when it drains.
            _wantWritable = true;
        }
        TrySend();
        return n;
    }

    /// <summary>
    /// Room for host bytes, in place (contiguous; empty when the buffer is full or the connection takes no more): the
    /// caller reads its socket straight into it, then calls <see cref="Commit"/>. Valid until the next engine call.
    /// </summary>
    public Span<byte> WriteSpace() => CanWrite ? _send.WritableSpan() : default;

    /// <summary><see cref="Write"/> for <paramref name="n"/> bytes the caller put into <see cref="WriteSpace"/>.</summary>
    public void Commit(int n, long now, bool moreFollows = false)
    {
        _now = now;
        if (!CanWrite)
        {
            return;
        }
        _holdTail = moreFollows;
        _send.Commit(n);
        if (_send.Free == 0)
        {
            _wantWritable = true;
        }
        TrySend();
    }

    /// <summary>The host closed its side: send FIN after the queued data (half-close).</summary>
    public void Shutdown(long now)
    {
        _now = now;
        if (Removed || _finQueued || State is not (TcpState.Established or TcpState.CloseWait or TcpState.SynReceived))
        {
            return;
        }
        _finQueued = true;
        _holdTail = false;
        TrySend();
    }

    /// <summary>The host socket failed or was reset: reset the guest side too.</summary>
    public void Abort(long now)
    {
        _now = now;
        if (Removed)
        {
            return;
        }
        if (State == TcpState.Connecting)
        {
            CompleteConnect(connected: false, now);
            return;
        }
        if (State is not (TcpState.SynSent or TcpState.TimeWait))
        {
            Dispatch(_sndNxt, TcpFlags.Rst | TcpFlags.Ack, 0, 0, synOptions: false);
        }
        IsReset = true;
        Close();
    }

    // ---- Ending ----

    private void Reset(bool sendRst)
    {
        if (sendRst)
        {
            Dispatch(_sndNxt, TcpFlags.Rst | TcpFlags.Ack, 0, 0, synOptions: false);
        }
        IsReset = true;
        Close();
        _host.Flows.TcpReset(this);
    }

    /// <summary>Leaves the gateway's table for good: timers off, unsent data dropped (and unread data, after a reset).</summary>
    private void Close()
    {
        if (Removed)
        {
            return;
        }
        _host.Detach(this);
        Removed = true;
        State = TcpState.Closed;
        _rtoDeadline = _ptoDeadline = _persistDeadline = _delayedAckDeadline = _timeWaitDeadline = 0;
        _send.Clear();
        _ooo?.Clear();
        if (IsReset)
        {
            _receive.Clear();
        }
    }

    private void EnterTimeWait()
    {
        State = TcpState.TimeWait;
        _rtoDeadline = 0;
        _ptoDeadline = 0;
        _persistDeadline = 0;
        _timeWaitDeadline = _now + TimeWaitMs;
        _host.WakeAt(_timeWaitDeadline);
    }

    // ---- Timers ----

    private void ArmDelayedAck()
    {
        if (_delayedAckDeadline == 0)
        {
            _delayedAckDeadline = _now + DelayedAckMs;
            _host.WakeAt(_delayedAckDeadline);
        }
    }

    private void ArmRto()
    {
        _rtoDeadline = _now + _rto;
        _host.WakeAt(_rtoDeadline);
    }

    /// <summary>
    /// RFC 8985 §7.2: arms the probe timeout while data is outstanding outside loss recovery: PTO = 2*SRTT (floored at
    /// <see cref="MinPto"/>), plus the guest's worst-case delayed ACK when only one segment is out (it may hold that
    /// ACK). Not when the RTO would fire first, nor before an RTT sample, nor twice in one episode.
    /// </summary>
    private void ArmLossProbe()
    {
        _ptoDeadline = 0;
        uint flight = _sndNxt - _sndUna;
        if (flight == 0 || _srtt == 0 || _inRecovery || _backoff > 0 || _probeSent || _probing
            || State is not (TcpState.Established or TcpState.CloseWait or TcpState.FinWait1 or TcpState.Closing or TcpState.LastAck))
        {
            return;
        }
        long deadline = _now + Math.Max(2 * _srtt, MinPto) + (flight <= (uint)SendMss ? WorstDelayedAckMs : 0);
        if (_rtoDeadline != 0 && deadline >= _rtoDeadline)
        {
            return;
        }
        _ptoDeadline = deadline;
        _host.WakeAt(deadline);
    }

    /// <summary>
    /// RFC 8985 §7.3: the probe. One new segment if there is one and the guest's window takes it (cwnd aside), else the
    /// last segment again: its whole offloaded frame when the link offloads, so an ACK or SACK comes back either way
    /// and the loss behind it is repaired by fast recovery, not by the timer. cwnd is untouched; the RTO restarts.
    /// </summary>
    private void OnLossProbe()
    {
        _ptoDeadline = 0;
        _probeSent = true;
        int full = _host.MaxSegment(GuestIp.IsV4) is > 0 and int max ? max : SendMss;
        uint flight = _sndNxt - _sndUna;
        int sentOffset = Lt(_sndNxt, _sendBase) ? 0 : (int)Math.Min(_sndNxt - _sendBase, (uint)_send.Count);
        int unsent = _finSent ? 0 : _send.Count - sentOffset;
        if (unsent > 0 && flight < _sndWnd)
        {
            int n = (int)Math.Min((uint)Math.Min(unsent, full), _sndWnd - flight);
            Dispatch(_sndNxt, TcpFlags.Ack | (n == unsent ? TcpFlags.Psh : 0), sentOffset, n, synOptions: false);
            _sndNxt += (uint)n;
        }
        else
        {
            bool fin = _finSent && Lt(_finSeq, _sndNxt);
            uint dataEnd = fin ? _finSeq : _sndNxt;
            uint start = dataEnd - Math.Min(dataEnd - _sndUna, (uint)full);
            if (Lt(start, _sendBase))
            {
                start = _sendBase;
            }
            int n = Le(dataEnd, start) ? 0 : (int)(dataEnd - start);
            if (n > 0 || fin)
            {
                _host.Counters.TcpRetransmits++;
                _rttTiming = false; // Karn: no sample from a retransmitted segment.
                Dispatch(start, TcpFlags.Ack | (fin ? TcpFlags.Fin : 0), (int)(start - _sendBase), n, synOptions: false);
            }
        }
        ArmRto();
    }

    private void ArmPersist()
    {
        if (_persistDeadline == 0)
        {
            _persistDeadline = _now + Math.Min(_rto << Math.Min(_backoff, 6), MaxRto);
            _host.WakeAt(_persistDeadline);
        }
    }

    /// <summary>Runs the socket's timers that are due: TIME-WAIT expiry, the delayed ACK, retransmission, the persist probe.</summary>
    internal void OnTimer(long now)
    {
        _now = now;
        if (_timeWaitDeadline != 0 && now >= _timeWaitDeadline)
        {
            Close();
            return;
        }
        if (_delayedAckDeadline != 0 && now >= _delayedAckDeadline)
        {
            SendAck();
        }
        if (_ptoDeadline != 0 && now >= _ptoDeadline && (_rtoDeadline == 0 || now < _rtoDeadline))
        {
            OnLossProbe();
        }
        if (_rtoDeadline != 0 && now >= _rtoDeadline)
        {
            OnRetransmitTimeout();
            if (Removed)
            {
                return;
            }
        }
        if (_persistDeadline != 0 && now >= _persistDeadline)
        {
            OnPersist();
        }
    }

    private static long Min(long m, long a, long b, long c, long d, long e)
    {
        foreach (long x in (ReadOnlySpan<long>)[a, b, c, d, e])
        {
            if (x != 0 && x < m)
            {
                m = x;
            }
        }
        return m;
    }

    private void OnRetransmitTimeout()
    {
        _rtoDeadline = 0;
        _ptoDeadline = 0;
        _retries++;
        int limit = State is TcpState.SynReceived or TcpState.SynSent ? MaxSynRetries : MaxRetries;
        if (_retries > limit)
        {
            Reset(sendRst: State != TcpState.SynSent);
            return;
        }
        // RFC 6298 §5.5: back off the timer; RFC 5681 §3.1: one segment after a timeout.
        _backoff++;
        _rto = Math.Min(_rto * 2, MaxRto);
        _rttTiming = false;
        _host.Counters.TcpRetransmits++;
        switch (State)
        {
            case TcpState.SynReceived:
                SendSyn(TcpFlags.Syn | TcpFlags.Ack);
                return;
            case TcpState.SynSent:
                if (GuestMac == MacAddress.Zero && !_host.TryResolve(GuestIp, out GuestMac))
                {
                    _host.RequestAddress(GuestIp);
                    ArmRto();
                    return;
                }
                SendSyn(TcpFlags.Syn);
                return;
        }
        uint flight = _sndNxt - _sndUna;
        _ssthresh = Math.Max(flight / 2, (uint)(2 * SendMss));
        _cwnd = (uint)SendMss;
        _inRecovery = false; // RFC 6582 §3.2 step 4: a timeout ends fast recovery.
        _sndNxt = _sndUna; // Go back N: resend from the first unacknowledged byte.
        TrySend();
    }

    /// <summary>
    /// RFC 9293 §3.8.6.1 zero-window probe: one byte past the window. It is counted as sent, so if the guest
    /// accepts it the ACK is ordinary; if not, the retransmission timer repeats the probe with back-off.
    /// </summary>
    private void OnPersist()
    {
        _persistDeadline = 0;
        int offset = (int)(_sndNxt - _sendBase);
        if (_sndWnd != 0 || offset < 0 || offset >= _send.Count)
        {
            TrySend();
            return;
        }
        Dispatch(_sndNxt, TcpFlags.Ack, offset, 1, synOptions: false);
        _sndNxt++;
        _probing = true;
        _backoff++;
        ArmRto();
    }
}

/// <summary>The header of one segment a socket dispatches; the gateway adds the addresses, ports and checksum.</summary>
internal readonly record struct TcpHeaderFields(uint Sequence, uint Acknowledgment, TcpFlags Flags, ushort Window, bool HasOptions, TcpOptions Options,
    SackBlocks Sack = default);
