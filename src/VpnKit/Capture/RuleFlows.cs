using Kit.VpnKit.Policy;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Capture;

/// <summary>
/// Which flows each capture of a policy rule follows (docs/vpnkit.md, "pcap of one rule").
/// <para>
/// The switch's tap sees a flow's first frame (the guest's SYN, datagram or echo request) before the engine hands it to
/// the NAT, where the policy decides it, and the engine does that on the tap's thread before the thread taps another
/// frame of the guest's. So the tap keeps a copy of the last such frame on its thread, and the decision, told the rule
/// and the remote end, takes that copy into the rule's capture (with the time it passed the tap) and follows the flow
/// from then on, both ways, ICMP errors about it included: a rejected SYN and the gateway's RST, a denied datagram.
/// </para>
/// <para>
/// A TCP flow whose rules wait for its first bytes (sni, host) is undecided for several frames: while a rule capture
/// runs, those frames wait in a bounded backlog until the proxy decides, then go to the rule's capture or are dropped.
/// Bounded: <see cref="MaxFlows"/> flows followed (the oldest is forgotten first), <see cref="MaxPending"/> backlogs of
/// <see cref="PendingBytes"/> each (the oldest is dropped first).
/// </para>
/// </summary>
internal sealed class RuleFlows
{
    public const int MaxFlows = 16_384;
    public const int MaxPending = 32;
    public const int PendingBytes = 64 * 1024;
    private const int SnapLength = 65535;

    private readonly object _gate = new();
    /// <summary>Followed flows by their key as the guest sent it (guest → remote), oldest first in <see cref="_order"/>.</summary>
    private readonly Dictionary<FlowKey, LinkedListNode<Followed>> _followed = [];
    private readonly LinkedList<Followed> _order = new();
    private readonly Dictionary<FlowKey, Backlog> _pending = [];
    private long _pendingSeq;

    /// <summary>The last frame on this thread that makes the NAT decide, until the decision (or the next frame).</summary>
    [ThreadStatic]
    private static Held? t_held;

    private sealed class Followed(FlowKey key, LiveCapture capture)
    {
        public FlowKey Key { get; } = key;
        public LiveCapture Capture { get; set; } = capture;
    }

    private sealed class Held
    {
        public byte[] Frame = new byte[2048];
        public int Length;
        public long Micros;
        public FlowKey Key;
        /// <summary>The capture that took the frame at the tap (its flow was followed already), or null.</summary>
        public LiveCapture? TakenBy;
        public bool Valid;
    }

    private sealed class Backlog(long seq)
    {
        public long Seq { get; } = seq;
        public List<(byte[] Frame, long Micros)> Frames { get; } = [];
        public int Bytes;

        public void Add(ReadOnlySpan<byte> frame, long micros)
        {
            int n = Math.Min(frame.Length, SnapLength);
            if (Bytes + n > PendingBytes)
            {
                return; // Past the bound the backlog keeps its head: the handshake and the first bytes that decide.
            }
            Frames.Add((frame.Slice(0, n).ToArray(), micros));
            Bytes += n;
        }
    }

    /// <summary>Flows followed now (for tests and the bound).</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _followed.Count;
            }
        }
    }

    /// <summary>Undecided TCP flows held (for tests and the bound).</summary>
    public int PendingCount
    {
        get
        {
            lock (_gate)
            {
                return _pending.Count;
            }
        }
    }

    /// <summary>The tap, while a rule capture runs: a followed flow's frame goes to its capture; a decision's frame is held.</summary>
    public void Offer(ReadOnlySpan<byte> frame)
    {
        // A frame without a flow (ARP, a later fragment) leaves the held frame alone: a datagram that came in fragments is
        // decided on its last one, and the held first fragment is the one with the ports.
        if (!FlowKey.TryRead(frame, out FlowKey key, out bool opening))
        {
            return;
        }
        Held? held = t_held;
        long micros = PcapWriter.NowMicros();
        LiveCapture? taken = null;
        lock (_gate)
        {
            if (Find(key) is Followed f)
            {
                taken = f.Capture;
                taken.Take(frame, micros);
            }
            else if (_pending.Count > 0 && (_pending.TryGetValue(key, out Backlog? b) || _pending.TryGetValue(key.Reversed, out b)))
            {
                b.Add(frame, micros);
            }
        }
        if (!opening)
        {
            if (held is not null)
            {
                held.Valid = false;
            }
            return;
        }
        held = t_held ??= new Held();
        int n = Math.Min(frame.Length, SnapLength);
        if (held.Frame.Length < n)
        {
            held.Frame = new byte[Math.Max(n, held.Frame.Length * 2)];
        }
        frame.Slice(0, n).CopyTo(held.Frame);
        (held.Length, held.Micros, held.Key, held.TakenBy, held.Valid) = (n, micros, key, taken, true);
    }

    /// <summary>
    /// The NAT decided a new flow to <paramref name="remote"/>:<paramref name="remotePort"/> (by <paramref name="rule"/>,
    /// or none), on the thread whose tap holds the frame that asked. That flow is followed by the rule's capture, if one
    /// runs, and by no other; <paramref name="needStream"/>: undecided until its first bytes, so it waits in a backlog.
    /// </summary>
    public void Decided(RuleProto proto, IpAddr remote, ushort remotePort, PolicyRule? rule, bool needStream, IReadOnlyList<LiveCapture> captures)
    {
        if (t_held is not { Valid: true } held || held.Key.Protocol != Protocol(proto) || held.Key.Destination != remote
            || (proto != RuleProto.Icmp && held.Key.DestinationPort != remotePort))
        {
            return;
        }
        held.Valid = false;
        LiveCapture? target = rule is null ? null : CaptureOf(captures, rule.Name);
        lock (_gate)
        {
            if (needStream)
            {
                Unfollow(held.Key);
                Pend(held);
                return;
            }
            _pending.Remove(held.Key);
            if (target is null)
            {
                Unfollow(held.Key);
                return;
            }
            Follow(held.Key, target);
            if (held.TakenBy != target)
            {
                target.Take(held.Frame.AsSpan(0, held.Length), held.Micros);
            }
        }
    }

    /// <summary>
    /// The proxy decided a TCP flow on its first bytes: its backlog (handshake and first bytes) goes to the rule's capture,
    /// which follows it from now on, or is dropped.
    /// </summary>
    public void DecidedOnStream(IpAddr guest, ushort guestPort, IpAddr remote, ushort remotePort, PolicyRule? rule, IReadOnlyList<LiveCapture> captures)
    {
        var key = new FlowKey(IpProtocol.Tcp, guest, guestPort, remote, remotePort);
        LiveCapture? target = rule is null ? null : CaptureOf(captures, rule.Name);
        lock (_gate)
        {
            _pending.Remove(key, out Backlog? backlog);
            if (target is null)
            {
                Unfollow(key);
                return;
            }
            Follow(key, target);
            if (backlog is not null)
            {
                foreach ((byte[] frame, long micros) in backlog.Frames)
                {
                    target.Take(frame, micros);
                }
            }
        }
    }

    /// <summary>Stops following the flows of <paramref name="capture"/> (it was stopped, deleted or its rule removed).</summary>
    public void Forget(LiveCapture capture)
    {
        lock (_gate)
        {
            LinkedListNode<Followed>? node = _order.First;
            while (node is not null)
            {
                LinkedListNode<Followed>? next = node.Next;
                if (node.Value.Capture == capture)
                {
                    _followed.Remove(node.Value.Key);
                    _order.Remove(node);
                }
                node = next;
            }
        }
    }

    /// <summary>No rule capture runs: nothing is followed or held.</summary>
    public void Clear()
    {
        lock (_gate)
        {
            _followed.Clear();
            _order.Clear();
            _pending.Clear();
        }
    }

    private static byte Protocol(RuleProto proto) => proto switch
    {
        RuleProto.Tcp => IpProtocol.Tcp,
        RuleProto.Udp => IpProtocol.Udp,
        RuleProto.Icmp => IpProtocol.Icmp,
        _ => 0,
    };

    private static LiveCapture? CaptureOf(IReadOnlyList<LiveCapture> captures, string rule)
    {
        foreach (LiveCapture c in captures)
        {
            if (c.Rule == rule && !c.Ended)
            {
                return c;
            }
        }
        return null;
    }

    private Followed? Find(FlowKey key) =>
        _followed.TryGetValue(key, out LinkedListNode<Followed>? n) || _followed.TryGetValue(key.Reversed, out n) ? n.Value : null;

    private void Follow(FlowKey key, LiveCapture capture)
    {
        if (_followed.TryGetValue(key, out LinkedListNode<Followed>? node))
        {
            if (node.Value.Capture != capture)
            {
                node.Value.Capture = capture;
                capture.CountFlow();
            }
            return;
        }
        if (_followed.Count >= MaxFlows && _order.First is { } oldest)
        {
            _followed.Remove(oldest.Value.Key);
            _order.RemoveFirst();
        }
        _followed[key] = _order.AddLast(new Followed(key, capture));
        capture.CountFlow();
    }

    private void Unfollow(FlowKey key)
    {
        if (_followed.Remove(key, out LinkedListNode<Followed>? node))
        {
            _order.Remove(node);
        }
    }

    private void Pend(Held held)
    {
        if (_pending.Count >= MaxPending)
        {
            FlowKey oldest = default;
            long seq = long.MaxValue;
            foreach (KeyValuePair<FlowKey, Backlog> kv in _pending)
            {
                if (kv.Value.Seq < seq)
                {
                    (oldest, seq) = (kv.Key, kv.Value.Seq);
                }
            }
            _pending.Remove(oldest);
        }
        var backlog = new Backlog(++_pendingSeq);
        if (held.TakenBy is null)
        {
            backlog.Add(held.Frame.AsSpan(0, held.Length), held.Micros);
        }
        _pending[held.Key] = backlog;
    }
}
