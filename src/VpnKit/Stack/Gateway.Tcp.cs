using Kit.Buffers;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// TCP termination (RFC 9293). The gateway is the far end of every guest connection; the NAT carries the bytes
/// to host sockets. Connect-before-accept: the SYN-ACK goes out only after the host connect succeeded.
/// Not implemented on purpose: SACK and timestamps (the link is a virtual wire: loss is rare, RTT is tiny),
/// out-of-order queueing (an out-of-order segment is dropped and a duplicate ACK asks for a retransmit),
/// urgent data. Congestion control is NewReno-lite: slow start, halving on fast retransmit, one MSS after a timeout.
/// </summary>
internal sealed partial class Gateway
{
    private const int MinRto = 200;      // Linux's floor; RFC 6298 §2.4 says 1 s but the link is a local wire.
    private const int MaxRto = 60_000;   // RFC 6298 §2.5.
    private const int InitialRto = 1000; // RFC 6298 §2.1.
    private const int MaxRetries = 12;
    private const int MaxSynRetries = 6;
    private const int DelayedAckMs = 20;
    private const int TimeWaitMs = 2000; // 2*MSL on a virtual wire; segments cannot linger in a network.

    private readonly Dictionary<FlowKey, TcpConnection> _tcp = [];
    private readonly List<TcpConnection> _due = [];
    private int _pending;
    private long _nextDeadline = long.MaxValue;
    private ushort _nextEphemeral = 49152;

    /// <summary>Largest TCP payload per emitted segment with offload (IPv4 total length is 16 bits); 0 = the MSS.</summary>
    private int MaxSegment => _o.SegmentationOffload ? 65535 - 20 - 60 : 0;

    public int TcpConnectionCount => _tcp.Count;
    public int PendingConnects => _pending;

    /// <summary>When <see cref="OnTimer"/> next has work (absolute ms), or long.MaxValue.</summary>
    public long NextDeadline => _nextDeadline;

    private static bool Lt(uint a, uint b) => (int)(a - b) < 0;
    private static bool Le(uint a, uint b) => (int)(a - b) <= 0;

    private void HandleTcp(MacAddress srcMac, Ipv4Packet ip)
    {
        if (!TcpSegment.TryParse(ip.Payload, out TcpSegment seg))
        {
            Counters.Malformed++;
            return;
        }
        uint src = ip.Source;
        uint dst = ip.Destination;
        if (!_trusted && !seg.ChecksumValid(src, dst))
        {
            Counters.BadChecksum++;
            return;
        }
        var key = new FlowKey(src, seg.SourcePort, dst, seg.DestinationPort);
        if (_tcp.TryGetValue(key, out TcpConnection? c))
        {
            OnSegment(c, seg);
            return;
        }
        TcpFlags f = seg.Flags;
        if ((f & TcpFlags.Rst) != 0)
        {
            return;
        }
        if ((f & (TcpFlags.Syn | TcpFlags.Ack | TcpFlags.Fin)) == TcpFlags.Syn && seg.SourcePort != 0 && seg.DestinationPort != 0
            && src != 0 && dst != _o.Broadcast && (dst >> 28) < 0xE && (dst == _o.GatewayIp || dst == _o.HostIp || !_o.InSubnet(dst)))
        {
            Accept(srcMac, key, src, dst, seg);
            return;
        }
        Counters.TcpNoConnection++;
        ResetFor(srcMac, src, dst, seg);
    }

    /// <summary>RFC 9293 §3.10.7.1: a segment for no connection gets a RST that the sender will accept.</summary>
    private void ResetFor(MacAddress mac, uint src, uint dst, TcpSegment seg)
    {
        if ((seg.Flags & TcpFlags.Ack) != 0)
        {
            EmitControl(mac, dst, seg.DestinationPort, src, seg.SourcePort, seg.Acknowledgment, 0, TcpFlags.Rst, 0);
        }
        else
        {
            uint segLen = (uint)seg.Payload.Length + ((seg.Flags & TcpFlags.Syn) != 0 ? 1u : 0) + ((seg.Flags & TcpFlags.Fin) != 0 ? 1u : 0);
            EmitControl(mac, dst, seg.DestinationPort, src, seg.SourcePort, 0, seg.Sequence + segLen, TcpFlags.Rst | TcpFlags.Ack, 0);
        }
    }

    private void Accept(MacAddress mac, FlowKey key, uint src, uint dst, TcpSegment seg)
    {
        if (_tcp.Count >= _o.MaxTcpConnections)
        {
            Counters.TcpTableFull++;
            ResetFor(mac, src, dst, seg);
            return;
        }
        if (_pending >= _o.MaxPendingConnects)
        {
            Counters.TcpPendingFull++;
            return; // The guest retransmits its SYN; new host connects start as old ones finish.
        }
        var c = new TcpConnection(key, src, seg.SourcePort, dst, seg.DestinationPort, mac, _o.TcpBufferSize);
        TcpOptions opts = seg.Options;
        c.Irs = seg.Sequence;
        c.RcvNxt = c.Irs + 1;
        c.LastAckSent = c.RcvNxt;
        c.LastAdvertisedEdge = c.RcvNxt;
        NegotiateOptions(c, opts);
        // RFC 7323 §2.2: the window in a SYN is never scaled.
        c.SndWnd = seg.Window;
        c.SndWl1 = seg.Sequence;
        c.Iss = InitialSequence(key);
        c.SndUna = c.Iss;
        c.SndNxt = c.Iss;
        c.SendBase = c.Iss + 1;
        c.State = TcpState.Connecting;
        _pending++;
        _tcp[key] = c;
        _flows.TcpConnectRequested(c);
    }

    private void NegotiateOptions(TcpConnection c, TcpOptions opts)
    {
        // RFC 9293 §3.7.1: 536 when the peer sent no MSS; never more than our MTU allows.
        c.SendMss = Math.Min(opts.Mss == 0 ? 536 : opts.Mss, _o.Mss);
        if (c.SendMss < 64)
        {
            c.SendMss = 64;
        }
        // RFC 7323 §2.2: scaling is on only if both sides send the option.
        c.Scaling = opts.WindowScale >= 0;
        if (c.Scaling)
        {
            c.SndShift = opts.WindowScale;
            c.RcvShift = ShiftFor(_o.TcpBufferSize);
        }
        else
        {
            c.SndShift = 0;
            c.RcvShift = 0;
        }
        c.Cwnd = (uint)(10 * c.SendMss); // RFC 6928 initial window.
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

    /// <summary>RFC 6528: a keyed hash of the 4-tuple plus a 4 µs clock.</summary>
    private uint InitialSequence(FlowKey key)
    {
        ulong x = key.A ^ _o.IsnSecret;
        x = Mix(x + key.B);
        return (uint)x + (uint)(_now * 250);
    }

    private static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>The NAT reports the host connect's outcome: SYN-ACK on success, RST on failure.</summary>
    public bool CompleteConnect(TcpConnection c, bool connected, long now)
    {
        _now = now;
        if (c.State != TcpState.Connecting || c.Removed)
        {
            return false;
        }
        _pending--;
        if (!connected)
        {
            // Refused: RST+ACK for the SYN, so the guest's connect fails with ECONNREFUSED.
            EmitControl(c.GuestMac, c.RemoteIp, c.RemotePort, c.GuestIp, c.GuestPort, 0, c.RcvNxt, TcpFlags.Rst | TcpFlags.Ack, 0);
            c.IsReset = true;
            Remove(c, pendingCounted: false);
            return false;
        }
        c.State = TcpState.SynReceived;
        SendSyn(c, TcpFlags.Syn | TcpFlags.Ack);
        return true;
    }

    /// <summary>
    /// Opens a connection to a guest (port publishing). The SYN goes out now, or once the guest answers ARP.
    /// Returns null if the table is full or no source port is free.
    /// </summary>
    public TcpConnection? OpenToGuest(uint guestIp, ushort guestPort, uint sourceIp, long now)
    {
        _now = now;
        if (_tcp.Count >= _o.MaxTcpConnections)
        {
            return null;
        }
        for (int tries = 0; tries < 16384; tries++)
        {
            ushort port = _nextEphemeral;
            _nextEphemeral = _nextEphemeral == 65535 ? (ushort)49152 : (ushort)(_nextEphemeral + 1);
            var key = new FlowKey(guestIp, guestPort, sourceIp, port);
            if (_tcp.ContainsKey(key))
            {
                continue;
            }
            _arp.TryGetValue(guestIp, out MacAddress mac);
            var c = new TcpConnection(key, guestIp, guestPort, sourceIp, port, mac, _o.TcpBufferSize);
            c.Iss = InitialSequence(key);
            c.SndUna = c.Iss;
            c.SndNxt = c.Iss;
            c.SendBase = c.Iss + 1;
            c.RcvShift = ShiftFor(_o.TcpBufferSize);
            c.SendMss = 536;
            c.State = TcpState.SynSent;
            _tcp[key] = c;
            if (mac == MacAddress.Zero)
            {
                SendArpRequest(guestIp);
                c.SndNxt = c.Iss + 1;
                ArmRto(c);
            }
            else
            {
                SendSyn(c, TcpFlags.Syn);
            }
            return c;
        }
        return null;
    }

    private void SendSyn(TcpConnection c, TcpFlags flags)
    {
        c.SndNxt = c.Iss + 1;
        EmitSegment(c, c.Iss, flags, 0, 0, synOptions: true);
        ArmRto(c);
    }

    private void OnSegment(TcpConnection c, TcpSegment seg)
    {
        TcpFlags f = seg.Flags;
        uint seq = seg.Sequence;
        ReadOnlySpan<byte> payload = seg.Payload;
        switch (c.State)
        {
            case TcpState.Connecting:
                if ((f & TcpFlags.Rst) != 0 && seq == c.RcvNxt)
                {
                    ResetConnection(c, sendRst: false);
                }
                return; // A retransmitted SYN while the host connect is pending is ignored (vpnkit does the same).
            case TcpState.SynSent:
                OnSynSentSegment(c, seg);
                return;
            case TcpState.Closed:
                return;
        }

        // RFC 9293 §3.10.7.4, first: is the segment acceptable?
        uint segLen = (uint)payload.Length + ((f & TcpFlags.Fin) != 0 ? 1u : 0);
        uint edge = Lt(c.LastAdvertisedEdge, c.RcvNxt) ? c.RcvNxt : c.LastAdvertisedEdge;
        bool acceptable = seq == c.RcvNxt
            || (Lt(c.RcvNxt, seq) && Lt(seq, edge))
            || (Lt(seq, c.RcvNxt) && Lt(c.RcvNxt, seq + segLen));
        if (!acceptable)
        {
            if ((f & TcpFlags.Rst) == 0)
            {
                SendAck(c);
            }
            return;
        }

        // Second: RST. RFC 5961 §3.2: only an exact match resets; an in-window one gets a challenge ACK.
        if ((f & TcpFlags.Rst) != 0)
        {
            if (seq == c.RcvNxt)
            {
                ResetConnection(c, sendRst: false);
            }
            else
            {
                SendAck(c);
            }
            return;
        }

        // Fourth: SYN. A retransmitted SYN in SYN-RECEIVED means our SYN-ACK was lost; otherwise challenge (RFC 5961 §4).
        if ((f & TcpFlags.Syn) != 0)
        {
            if (c.State == TcpState.SynReceived && seq == c.Irs)
            {
                SendSyn(c, TcpFlags.Syn | TcpFlags.Ack);
            }
            else
            {
                SendAck(c);
            }
            return;
        }

        // Fifth: ACK.
        if ((f & TcpFlags.Ack) == 0)
        {
            return;
        }
        uint ack = seg.Acknowledgment;
        if (c.State == TcpState.SynReceived)
        {
            if (Lt(c.SndUna, ack) && Le(ack, c.SndNxt))
            {
                c.State = TcpState.Established;
                c.SndUna = ack;
                c.SndWnd = (uint)seg.Window << c.SndShift;
                c.MaxSndWnd = c.SndWnd;
                c.SndWl1 = seq;
                c.SndWl2 = ack;
                c.RtoDeadline = 0;
                c.Retries = 0;
                c.Rto = InitialRto;
            }
            else
            {
                EmitControl(c.GuestMac, c.RemoteIp, c.RemotePort, c.GuestIp, c.GuestPort, ack, 0, TcpFlags.Rst, 0);
                return;
            }
        }
        if (Lt(c.SndNxt, ack))
        {
            SendAck(c); // Acknowledges something not yet sent.
            return;
        }
        if (!ProcessAck(c, seg, seq, ack, payload.Length, f))
        {
            return; // Connection finished.
        }

        // Seventh: segment text.
        bool ackNow = false;
        bool allTaken = true;
        if (payload.Length > 0 && c.State is TcpState.Established or TcpState.FinWait1 or TcpState.FinWait2)
        {
            if (Lt(seq, c.RcvNxt))
            {
                int skip = (int)(c.RcvNxt - seq);
                payload = skip >= payload.Length ? default : payload.Slice(skip);
                seq = c.RcvNxt;
            }
            if (seq != c.RcvNxt)
            {
                // Out of order: dropped; the duplicate ACK lets the guest's fast retransmit fill the hole.
                Counters.TcpOutOfOrder++;
                SendAck(c);
                return;
            }
            int n = c.Receive.Write(payload);
            c.RcvNxt += (uint)n;
            allTaken = n == payload.Length;
            if (n > 0)
            {
                _flows.TcpReadable(c);
                c.SegmentsSinceAck++;
            }
            // RFC 9293 §3.8.6.3 / RFC 1122 §4.2.3.2: ACK at least every second full segment, a full buffer at once,
            // otherwise within DelayedAckMs. PSH does not force an ACK: a request's answer usually comes from the host
            // well within the delay and carries the ACK, which saves a frame (and a wake-up of the guest) per round trip.
            ackNow = !allTaken || c.SegmentsSinceAck >= 2;
            if (!ackNow)
            {
                c.AckPending = true;
                if (c.DelayedAckDeadline == 0)
                {
                    c.DelayedAckDeadline = _now + DelayedAckMs;
                    NoteDeadline(c.DelayedAckDeadline);
                }
            }
        }

        // Eighth: FIN, once everything before it has been taken.
        if ((f & TcpFlags.Fin) != 0 && allTaken && seq + (uint)payload.Length == c.RcvNxt && !c.GuestFinished)
        {
            c.RcvNxt++;
            c.GuestFinished = true;
            ackNow = true;
            switch (c.State)
            {
                case TcpState.Established:
                case TcpState.SynReceived:
                    c.State = TcpState.CloseWait;
                    break;
                case TcpState.FinWait1:
                    c.State = TcpState.Closing;
                    break;
                case TcpState.FinWait2:
                    EnterTimeWait(c);
                    break;
            }
            _flows.TcpReadable(c);
        }
        else if ((f & TcpFlags.Fin) != 0 && c.GuestFinished)
        {
            ackNow = true; // A retransmitted FIN: our ACK was lost.
            if (c.State == TcpState.TimeWait)
            {
                EnterTimeWait(c);
            }
        }

        TrySend(c);
        if (ackNow && c.LastAckSent != c.RcvNxt)
        {
            SendAck(c);
        }
        else if (ackNow && (f & TcpFlags.Fin) != 0)
        {
            SendAck(c);
        }
    }

    /// <summary>ACK processing (RFC 9293 §3.10.7.4 fifth check). Returns false if the connection is gone.</summary>
    private bool ProcessAck(TcpConnection c, TcpSegment seg, uint seq, uint ack, int payloadLength, TcpFlags f)
    {
        uint window = (uint)seg.Window << c.SndShift;
        if (Lt(c.SndUna, ack))
        {
            uint acked = ack - c.SndUna;
            int data = (int)Math.Min(ack - c.SendBase, (uint)c.Send.Count);
            if (Lt(ack, c.SendBase))
            {
                data = 0;
            }
            c.Send.Consume(data);
            c.SendBase += (uint)data;
            c.SndUna = ack;
            if (c.RttTiming && Le(c.RttSeq, ack))
            {
                SampleRtt(c, (int)(_now - c.RttStart));
                c.RttTiming = false;
            }
            if (c.Cwnd < c.Ssthresh)
            {
                c.Cwnd += Math.Min(acked, (uint)c.SendMss);
            }
            else
            {
                c.Cwnd += Math.Max(1u, (uint)(c.SendMss * c.SendMss) / Math.Max(c.Cwnd, 1u));
            }
            c.DupAcks = 0;
            c.Backoff = 0;
            c.Retries = 0;
            if (c.SndUna == c.SndNxt)
            {
                c.RtoDeadline = 0;
            }
            else
            {
                ArmRto(c);
            }
            if (c.WantWritable && c.Send.Free >= c.Send.Capacity / 4)
            {
                c.WantWritable = false;
                _flows.TcpWritable(c);
            }
        }
        else if (ack == c.SndUna)
        {
            c.Retries = 0;
            if (payloadLength == 0 && (f & TcpFlags.Fin) == 0 && window == c.SndWnd && c.SndNxt != c.SndUna)
            {
                // RFC 5681 §3.2: the third duplicate ACK triggers fast retransmit.
                if (++c.DupAcks == 3)
                {
                    uint flight = c.SndNxt - c.SndUna;
                    c.Ssthresh = Math.Max(flight / 2, (uint)(2 * c.SendMss));
                    c.Cwnd = c.Ssthresh + (uint)(3 * c.SendMss);
                    RetransmitFirst(c);
                }
            }
        }

        // Window update, guarded by SND.WL1/WL2 against old segments.
        if (Lt(c.SndWl1, seq) || (c.SndWl1 == seq && Le(c.SndWl2, ack)))
        {
            c.SndWnd = window;
            c.SndWl1 = seq;
            c.SndWl2 = ack;
            if (window > c.MaxSndWnd)
            {
                c.MaxSndWnd = window;
            }
            if (window > 0)
            {
                c.PersistDeadline = 0;
                if (c.Probing)
                {
                    // The window opened: resend from the first unacknowledged byte (the probe may have been dropped).
                    c.Probing = false;
                    c.SndNxt = c.SndUna;
                    c.RtoDeadline = 0;
                }
            }
        }

        bool finAcked = c.FinSent && Lt(c.FinSeq, c.SndUna);
        if (finAcked)
        {
            switch (c.State)
            {
                case TcpState.FinWait1:
                    c.State = TcpState.FinWait2;
                    break;
                case TcpState.Closing:
                    EnterTimeWait(c);
                    break;
                case TcpState.LastAck:
                    Remove(c, pendingCounted: false);
                    return false;
            }
        }
        return true;
    }

    /// <summary>RFC 6298 §2.2-2.3 smoothed RTT and variance; RTO floored at <see cref="MinRto"/>.</summary>
    private static void SampleRtt(TcpConnection c, int r)
    {
        r = Math.Max(r, 1);
        if (c.Srtt == 0)
        {
            c.Srtt = r;
            c.RttVar = r / 2;
        }
        else
        {
            c.RttVar = (3 * c.RttVar + Math.Abs(c.Srtt - r)) / 4;
            c.Srtt = (7 * c.Srtt + r) / 8;
        }
        c.Rto = Math.Clamp(c.Srtt + Math.Max(1, 4 * c.RttVar), MinRto, MaxRto);
    }

    private void OnSynSentSegment(TcpConnection c, TcpSegment seg)
    {
        TcpFlags f = seg.Flags;
        uint ack = seg.Acknowledgment;
        bool hasAck = (f & TcpFlags.Ack) != 0;
        // RFC 9293 §3.10.7.3.
        if (hasAck && ack != c.Iss + 1)
        {
            if ((f & TcpFlags.Rst) == 0)
            {
                EmitControl(c.GuestMac, c.RemoteIp, c.RemotePort, c.GuestIp, c.GuestPort, ack, 0, TcpFlags.Rst, 0);
            }
            return;
        }
        if ((f & TcpFlags.Rst) != 0)
        {
            if (hasAck)
            {
                ResetConnection(c, sendRst: false);
            }
            return;
        }
        if ((f & TcpFlags.Syn) == 0 || !hasAck)
        {
            return; // Simultaneous open is not supported: the guest never connects to its own ephemeral port.
        }
        c.Irs = seg.Sequence;
        c.RcvNxt = c.Irs + 1;
        TcpOptions opts = seg.Options;
        NegotiateOptions(c, opts);
        c.SndUna = ack;
        c.SndWnd = seg.Window; // Unscaled in a SYN (RFC 7323 §2.2).
        c.MaxSndWnd = c.SndWnd;
        c.SndWl1 = seg.Sequence;
        c.SndWl2 = ack;
        c.RtoDeadline = 0;
        c.Retries = 0;
        c.Rto = InitialRto;
        c.State = TcpState.Established;
        SendAck(c);
        _flows.TcpEstablished(c);
    }

    /// <summary>Sends what the windows allow: new data up to min(peer window, cwnd), then a queued FIN.</summary>
    private void TrySend(TcpConnection c)
    {
        if (c.State is not (TcpState.Established or TcpState.CloseWait or TcpState.FinWait1 or TcpState.Closing or TcpState.LastAck))
        {
            return;
        }
        while (true)
        {
            uint inFlight = c.SndNxt - c.SndUna;
            int offset = (int)Math.Min(c.SndNxt - c.SendBase, (uint)c.Send.Count);
            if (Lt(c.SndNxt, c.SendBase))
            {
                offset = 0;
            }
            int unsent = c.FinSent && !Lt(c.SndNxt, c.FinSeq) ? 0 : c.Send.Count - offset;
            uint window = Math.Min(c.SndWnd, c.Cwnd);
            if (unsent > 0)
            {
                if (inFlight >= window)
                {
                    if (c.SndWnd == 0 && inFlight == 0)
                    {
                        ArmPersist(c);
                    }
                    return;
                }
                int full = MaxSegment == 0 ? c.SendMss : MaxSegment;
                int n = (int)Math.Min((uint)Math.Min(unsent, full), window - inFlight);
                // RFC 9293 §3.8.6.2.1 sender SWS avoidance: no small segment while more data waits and the window is
                // what limits us, unless nothing is in flight.
                if (n < Math.Min(full, c.SendMss) && n < unsent && inFlight > 0 && n < c.MaxSndWnd / 2)
                {
                    return;
                }
                if (c.HoldTail && n == unsent && n < full)
                {
                    return;
                }
                TcpFlags flags = TcpFlags.Ack | (n == unsent ? TcpFlags.Psh : 0);
                EmitSegment(c, c.SndNxt, flags, offset, n, synOptions: false);
                if (!c.RttTiming)
                {
                    c.RttTiming = true;
                    c.RttSeq = c.SndNxt + (uint)n;
                    c.RttStart = _now;
                }
                c.SndNxt += (uint)n;
                if (c.RtoDeadline == 0)
                {
                    ArmRto(c);
                }
                continue;
            }
            if (c.FinQueued && (!c.FinSent || c.SndNxt == c.FinSeq))
            {
                c.FinSeq = c.SndNxt;
                c.FinSent = true;
                EmitSegment(c, c.SndNxt, TcpFlags.Fin | TcpFlags.Ack, 0, 0, synOptions: false);
                c.SndNxt++;
                if (c.State == TcpState.Established)
                {
                    c.State = TcpState.FinWait1;
                }
                else if (c.State == TcpState.CloseWait)
                {
                    c.State = TcpState.LastAck;
                }
                ArmRto(c);
            }
            return;
        }
    }

    private void RetransmitFirst(TcpConnection c)
    {
        Counters.TcpRetransmits++;
        c.RttTiming = false; // Karn: no sample from a retransmitted segment.
        int avail = c.Send.Count;
        if (avail > 0 && !Lt(c.SndUna, c.SendBase))
        {
            int n = Math.Min(Math.Min(avail, c.SendMss), (int)Math.Min(c.SndNxt - c.SndUna, int.MaxValue));
            if (n > 0)
            {
                EmitSegment(c, c.SndUna, TcpFlags.Ack, 0, n, synOptions: false);
            }
        }
        else if (c.FinSent && c.SndUna == c.FinSeq)
        {
            EmitSegment(c, c.FinSeq, TcpFlags.Fin | TcpFlags.Ack, 0, 0, synOptions: false);
        }
        ArmRto(c);
    }

    // ---- Host (NAT) side ----

    /// <summary>Moves guest bytes to the host; opens the window when it has grown enough to be worth announcing.</summary>
    public int TcpRead(TcpConnection c, Span<byte> destination, long now)
    {
        int n = c.Receive.Peek(0, destination);
        TcpConsume(c, n, now);
        return n;
    }

    /// <summary>
    /// Guest bytes waiting for the host, in place (the oldest contiguous run; empty when none): the caller hands them
    /// to its socket and then reports with <see cref="TcpConsume"/> how many it took. Valid until the next engine call.
    /// </summary>
    public ReadOnlySpan<byte> TcpPeek(TcpConnection c) => c.Receive.ReadableSpan();

    /// <summary>The host took <paramref name="n"/> guest bytes: they leave the buffer and the window may reopen.</summary>
    public void TcpConsume(TcpConnection c, int n, long now)
    {
        _now = now;
        c.Receive.Consume(n);
        if (n > 0 && !c.Removed && c.State is TcpState.Established or TcpState.FinWait1 or TcpState.FinWait2)
        {
            // RFC 9293 §3.8.6.2.2 receiver SWS avoidance: announce only a useful increase, and only when the
            // guest's view of the window has got small (a slow host reader shrank it).
            uint guestView = c.LastAdvertisedEdge - c.RcvNxt;
            uint open = (uint)((c.Receive.Free >> c.RcvShift) << c.RcvShift);
            if (guestView < (uint)c.Receive.Capacity / 2 && open - guestView >= (uint)Math.Min(c.Receive.Capacity / 2, 2 * _o.Mss))
            {
                SendAck(c);
            }
        }
    }

    /// <summary>
    /// Queues host bytes for the guest; returns how many fit (the rest is back-pressure: wait for TcpWritable).
    /// <paramref name="moreFollows"/>: the host socket already holds more bytes that the caller writes next, so a
    /// short last segment is held back for them (one full segment instead of a full one and a sliver per read).
    /// Only a caller that will write again promptly may say so; any write without it sends what is held.
    /// </summary>
    public int TcpWrite(TcpConnection c, ReadOnlySpan<byte> data, long now, bool moreFollows = false)
    {
        _now = now;
        if (!c.CanWrite)
        {
            return 0;
        }
        c.HoldTail = moreFollows;
        int n = c.Send.Write(data);
        if (n < data.Length || c.Send.Free == 0)
        {
            // Full (a caller that reads the host only as far as there is room fills it exactly): say when it drains.
            c.WantWritable = true;
        }
        TrySend(c);
        return n;
    }

    /// <summary>
    /// Room for host bytes, in place (contiguous; empty when the buffer is full or the connection takes no more): the
    /// caller reads its socket straight into it, then calls <see cref="TcpCommit"/>. Valid until the next engine call.
    /// </summary>
    public Span<byte> TcpWriteSpace(TcpConnection c) => c.CanWrite ? c.Send.WritableSpan() : default;

    /// <summary><see cref="TcpWrite"/> for <paramref name="n"/> bytes the caller put into <see cref="TcpWriteSpace"/>.</summary>
    public void TcpCommit(TcpConnection c, int n, long now, bool moreFollows = false)
    {
        _now = now;
        if (!c.CanWrite)
        {
            return;
        }
        c.HoldTail = moreFollows;
        c.Send.Commit(n);
        if (c.Send.Free == 0)
        {
            c.WantWritable = true;
        }
        TrySend(c);
    }

    /// <summary>The host closed its side: send FIN after the queued data (half-close).</summary>
    public void TcpShutdown(TcpConnection c, long now)
    {
        _now = now;
        if (c.Removed || c.FinQueued || c.State is not (TcpState.Established or TcpState.CloseWait or TcpState.SynReceived))
        {
            return;
        }
        c.FinQueued = true;
        c.HoldTail = false;
        TrySend(c);
    }

    /// <summary>The host socket failed or was reset: reset the guest side too.</summary>
    public void TcpAbort(TcpConnection c, long now)
    {
        _now = now;
        if (c.Removed)
        {
            return;
        }
        if (c.State == TcpState.Connecting)
        {
            CompleteConnect(c, connected: false, now);
            return;
        }
        if (c.State is not (TcpState.SynSent or TcpState.TimeWait))
        {
            EmitSegment(c, c.SndNxt, TcpFlags.Rst | TcpFlags.Ack, 0, 0, synOptions: false);
        }
        c.IsReset = true;
        Remove(c, pendingCounted: false);
    }

    private void ResetConnection(TcpConnection c, bool sendRst)
    {
        if (sendRst)
        {
            EmitSegment(c, c.SndNxt, TcpFlags.Rst | TcpFlags.Ack, 0, 0, synOptions: false);
        }
        c.IsReset = true;
        Remove(c, pendingCounted: c.State == TcpState.Connecting);
        _flows.TcpReset(c);
    }

    private void Remove(TcpConnection c, bool pendingCounted)
    {
        if (c.Removed)
        {
            return;
        }
        if (pendingCounted)
        {
            _pending--;
        }
        _tcp.Remove(c.Key);
        c.Removed = true;
        c.State = TcpState.Closed;
        c.RtoDeadline = c.PersistDeadline = c.DelayedAckDeadline = c.TimeWaitDeadline = 0;
        c.Send.Clear();
        if (c.IsReset)
        {
            c.Receive.Clear();
        }
    }

    private void EnterTimeWait(TcpConnection c)
    {
        c.State = TcpState.TimeWait;
        c.RtoDeadline = 0;
        c.PersistDeadline = 0;
        c.TimeWaitDeadline = _now + TimeWaitMs;
        NoteDeadline(c.TimeWaitDeadline);
    }

    // ---- Timers ----

    private void ArmRto(TcpConnection c)
    {
        c.RtoDeadline = _now + c.Rto;
        NoteDeadline(c.RtoDeadline);
    }

    private void ArmPersist(TcpConnection c)
    {
        if (c.PersistDeadline == 0)
        {
            c.PersistDeadline = _now + Math.Min(c.Rto << Math.Min(c.Backoff, 6), MaxRto);
            NoteDeadline(c.PersistDeadline);
        }
    }

    private void NoteDeadline(long t)
    {
        if (t < _nextDeadline)
        {
            _nextDeadline = t;
        }
    }

    /// <summary>Runs every timer that is due: delayed ACKs, retransmissions, zero-window probes, TIME-WAIT expiry.</summary>
    public void OnTimer(long now)
    {
        _now = now;
        if (now < _nextDeadline)
        {
            return;
        }
        long next = long.MaxValue;
        _due.Clear();
        foreach (TcpConnection c in _tcp.Values)
        {
            if (c.DelayedAckDeadline != 0 || c.RtoDeadline != 0 || c.PersistDeadline != 0 || c.TimeWaitDeadline != 0)
            {
                _due.Add(c);
            }
        }
        foreach (TcpConnection c in _due)
        {
            if (c.Removed)
            {
                continue;
            }
            if (c.TimeWaitDeadline != 0 && now >= c.TimeWaitDeadline)
            {
                Remove(c, pendingCounted: false);
                continue;
            }
            if (c.DelayedAckDeadline != 0 && now >= c.DelayedAckDeadline)
            {
                SendAck(c);
            }
            if (c.RtoDeadline != 0 && now >= c.RtoDeadline)
            {
                OnRetransmitTimeout(c);
                if (c.Removed)
                {
                    continue;
                }
            }
            if (c.PersistDeadline != 0 && now >= c.PersistDeadline)
            {
                OnPersist(c);
            }
            next = Min(next, c.DelayedAckDeadline, c.RtoDeadline, c.PersistDeadline, c.TimeWaitDeadline);
        }
        _due.Clear();
        _nextDeadline = next;
    }

    private static long Min(long m, long a, long b, long c, long d)
    {
        if (a != 0 && a < m)
        {
            m = a;
        }
        if (b != 0 && b < m)
        {
            m = b;
        }
        if (c != 0 && c < m)
        {
            m = c;
        }
        if (d != 0 && d < m)
        {
            m = d;
        }
        return m;
    }

    private void OnRetransmitTimeout(TcpConnection c)
    {
        c.RtoDeadline = 0;
        c.Retries++;
        int limit = c.State is TcpState.SynReceived or TcpState.SynSent ? MaxSynRetries : MaxRetries;
        if (c.Retries > limit)
        {
            ResetConnection(c, sendRst: c.State != TcpState.SynSent);
            return;
        }
        // RFC 6298 §5.5: back off the timer; RFC 5681 §3.1: one segment after a timeout.
        c.Backoff++;
        c.Rto = Math.Min(c.Rto * 2, MaxRto);
        c.RttTiming = false;
        Counters.TcpRetransmits++;
        switch (c.State)
        {
            case TcpState.SynReceived:
                SendSyn(c, TcpFlags.Syn | TcpFlags.Ack);
                return;
            case TcpState.SynSent:
                if (c.GuestMac == MacAddress.Zero)
                {
                    if (_arp.TryGetValue(c.GuestIp, out MacAddress mac))
                    {
                        c.GuestMac = mac;
                    }
                    else
                    {
                        SendArpRequest(c.GuestIp);
                        ArmRto(c);
                        return;
                    }
                }
                SendSyn(c, TcpFlags.Syn);
                return;
        }
        uint flight = c.SndNxt - c.SndUna;
        c.Ssthresh = Math.Max(flight / 2, (uint)(2 * c.SendMss));
        c.Cwnd = (uint)c.SendMss;
        c.SndNxt = c.SndUna; // Go back N: resend from the first unacknowledged byte.
        TrySend(c);
    }

    /// <summary>
    /// RFC 9293 §3.8.6.1 zero-window probe: one byte past the window. It is counted as sent, so if the guest
    /// accepts it the ACK is ordinary; if not, the retransmission timer repeats the probe with back-off.
    /// </summary>
    private void OnPersist(TcpConnection c)
    {
        c.PersistDeadline = 0;
        int offset = (int)(c.SndNxt - c.SendBase);
        if (c.SndWnd != 0 || offset < 0 || offset >= c.Send.Count)
        {
            TrySend(c);
            return;
        }
        EmitSegment(c, c.SndNxt, TcpFlags.Ack, offset, 1, synOptions: false);
        c.SndNxt++;
        c.Probing = true;
        c.Backoff++;
        ArmRto(c);
    }

    // ---- Emission ----

    private void SendAck(TcpConnection c) => EmitSegment(c, c.SndNxt, TcpFlags.Ack, 0, 0, synOptions: false);

    /// <summary>Builds one segment for a connection into the transmit buffer, payload copied from its send buffer.</summary>
    private void EmitSegment(TcpConnection c, uint seq, TcpFlags flags, int sendOffset, int length, bool synOptions)
    {
        if (c.GuestMac == MacAddress.Zero && !_arp.TryGetValue(c.GuestIp, out c.GuestMac))
        {
            return;
        }
        const int tcpAt = EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength;
        Span<byte> f = _tx;
        int optLen = 0;
        if (synOptions)
        {
            var opts = new TcpOptions { Mss = (ushort)Math.Min(_o.Mss, 65535), WindowScale = (sbyte)(c.State == TcpState.SynSent || c.Scaling ? c.RcvShift : -1) };
            optLen = opts.Write(f.Slice(tcpAt + TcpSegment.MinHeaderLength));
        }
        int hl = TcpSegment.HeaderLengthFor(optLen);
        if (length > 0)
        {
            c.Send.Peek(sendOffset, f.Slice(tcpAt + hl, length));
        }
        // The window we advertise is the free space in the receive buffer: a slow host reader shrinks it.
        ushort win;
        if ((flags & TcpFlags.Syn) != 0)
        {
            win = (ushort)Math.Min(c.Receive.Free, 65535);
            c.LastAdvertisedEdge = c.RcvNxt + win;
        }
        else
        {
            // Advertise exactly what the buffer can take, rounded down to the scale unit. Rounding may pull the edge
            // back by less than one unit, which RFC 7323 §2.4 tells senders to expect; rounding up instead would
            // promise bytes we cannot store, and that error would accumulate from ACK to ACK.
            uint scaled = (uint)Math.Min(c.Receive.Free >> c.RcvShift, 65535);
            uint edge = c.RcvNxt + (scaled << c.RcvShift);
            win = (ushort)scaled;
            c.LastAdvertisedEdge = edge;
        }
        uint ack = (flags & TcpFlags.Ack) != 0 ? c.RcvNxt : 0;
        TcpSegment.Write(f.Slice(tcpAt, hl + length), hl, c.RemotePort, c.GuestPort, seq, ack, flags, win, c.RemoteIp, c.GuestIp, _o.SegmentationOffload);
        int ipLen = Ipv4Packet.MinHeaderLength + hl + length;
        WriteIpAndEthernet(f, c.GuestMac, c.RemoteIp, c.GuestIp, IpProtocol.Tcp, ipLen);
        if ((flags & TcpFlags.Ack) != 0)
        {
            c.LastAckSent = c.RcvNxt;
            c.AckPending = false;
            c.DelayedAckDeadline = 0;
            c.SegmentsSinceAck = 0;
        }
        EmitTcp(f.Slice(0, EthernetFrame.HeaderLength + ipLen), length > c.SendMss ? c.SendMss : 0);
    }

    private void EmitTcp(ReadOnlySpan<byte> frame, int segmentSize)
    {
        if (_o.SegmentationOffload)
        {
            Counters.FramesOut++;
            _sink.SendOffloaded(frame, segmentSize);
        }
        else
        {
            Emit(frame);
        }
    }

    private void EmitControl(MacAddress mac, uint src, ushort srcPort, uint dst, ushort dstPort, uint seq, uint ack, TcpFlags flags, ushort window)
    {
        const int tcpAt = EthernetFrame.HeaderLength + Ipv4Packet.MinHeaderLength;
        Span<byte> f = _tx;
        TcpSegment.Write(f.Slice(tcpAt, TcpSegment.MinHeaderLength), TcpSegment.MinHeaderLength, srcPort, dstPort, seq, ack, flags, window, src, dst, _o.SegmentationOffload);
        int ipLen = Ipv4Packet.MinHeaderLength + TcpSegment.MinHeaderLength;
        WriteIpAndEthernet(f, mac, src, dst, IpProtocol.Tcp, ipLen);
        EmitTcp(f.Slice(0, EthernetFrame.HeaderLength + ipLen), 0);
    }
}
