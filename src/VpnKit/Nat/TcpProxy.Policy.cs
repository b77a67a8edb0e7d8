using Kit.VpnKit.Inspect;
using Kit.VpnKit.Policy;

namespace Kit.VpnKit.Nat;

/// <summary>
/// A flow's policy (docs/vpnkit.md, "Policy"): an sni/host rule decided on the guest's first bytes before any of them
/// is sent, and a rule's impairment. A flow with neither never enters this file's code: <see cref="_shape"/> and
/// <see cref="_pendingPolicy"/> stay null and the pumps take their plain paths.
/// </summary>
internal sealed partial class TcpProxy
{
    private sealed class Shape
    {
        public required PolicyRule Rule;
        public TokenBucket? Out;
        public TokenBucket? In;
        public DelayLine? Delay;
        public long Moved;
        /// <summary>The host's EOF came while bytes still waited in the delay line.</summary>
        public bool HostEof;
    }

    /// <summary>The rules, while an sni/host rule waits for the guest's first bytes; null once decided.</summary>
    private PolicyTable? _pendingPolicy;
    private Shape? _shape;
    /// <summary>The flow ended by a rule (recorded as policy, not as a reset).</summary>
    private bool _byPolicy;

    /// <summary>When the NAT's timer should run this proxy again (absolute ms), 0: not asked.</summary>
    internal long WakeAt;

    /// <summary>The rules could not be decided before the stream: hold the guest's bytes until <see cref="FirstBytes"/> can say.</summary>
    public void DecideOnStream(PolicyTable table) => _pendingPolicy = table;

    /// <summary>The rule that let this flow through, when it has impairment for a stream.</summary>
    public void Apply(PolicyRule rule, long now)
    {
        Impairment i = rule.Impair;
        _shape = new Shape
        {
            Rule = rule,
            Out = i.RateKbps > 0 ? new TokenBucket(i.RateKbps, now) : null,
            In = i.RateKbps > 0 ? new TokenBucket(i.RateKbps, now) : null,
            Delay = i.LatencyMs > 0 || i.JitterMs > 0 ? new DelayLine(i.LatencyMs, i.JitterMs, Random.Shared) : null,
        };
    }

    /// <summary>
    /// How many of the guest's bytes in <paramref name="data"/> may go to the host now: all of them for an unshaped,
    /// decided flow; 0 while the first bytes cannot be decided yet, the bucket is empty (a wake-up is set) or a rule
    /// ended the flow.
    /// </summary>
    private int OutboundAllowance(ReadOnlySpan<byte> data, long now)
    {
        if (_pendingPolicy is not null && !DecideFromHead(data, now))
        {
            return 0;
        }
        if (_shape is not { } s)
        {
            return data.Length;
        }
        int n = Remaining(s, data.Length);
        if (s.Out is { } bucket)
        {
            n = bucket.Allow(n, now);
            if (n == 0)
            {
                _nat.WakeAt(this, bucket.ReadyAt(data.Length, now));
            }
        }
        return n;
    }

    /// <summary>Bytes the host took from the guest (shaped flows only).</summary>
    private void Sent(Shape s, int n, long now)
    {
        s.Out?.Take(n);
        Moved(s, n, now);
    }

    private static int Remaining(Shape s, int want) =>
        s.Rule.Impair.ResetAfterBytes > 0 ? (int)Math.Min(want, s.Rule.Impair.ResetAfterBytes - s.Moved) : want;

    private void Moved(Shape s, int n, long now)
    {
        s.Moved += n;
        s.Rule.AddBytes(n);
        if (s.Rule.Impair.ResetAfterBytes > 0 && s.Moved >= s.Rule.Impair.ResetAfterBytes)
        {
            // reset_after_bytes: RST both ways, as a middlebox or a dying server does mid-transfer.
            Abort(now);
        }
    }

    /// <summary>Decides an sni/host rule from the guest's first bytes; false: not yet (more bytes, or the flow ended).</summary>
    private bool DecideFromHead(ReadOnlySpan<byte> head, long now)
    {
        if (!FirstBytes.TryRead(head, _c.GuestFinished, out string? sni, out string? host))
        {
            return false;
        }
        PolicyTable table = _pendingPolicy!;
        _pendingPolicy = null;
        PolicyRule? rule = table.Decide(new FlowFacts(RuleProto.Tcp, _c.RemoteIp.Ipv4, _c.RemotePort, sni, host, StreamKnown: true, RemoteIp6: _c.RemoteIp.IsV4 ? 0 : _c.RemoteIp.Value), out _);
        _nat.Captures?.DecidedOnStream(_c.GuestIp, _c.GuestPort, _c.RemoteIp, _c.RemotePort, rule);
        if (rule is null || rule.Action == RuleAction.Allow)
        {
            if (rule is not null && rule.Impair.ShapesStreams)
            {
                Apply(rule, now);
            }
            if (rule is { Impair.LossPct: > 0 })
            {
                _c.Loss = new RuleLoss(rule);
            }
            return true;
        }
        // The handshake is over by now, so deny cannot be a silent drop of the SYN: both deny and reject reset the
        // flow before a byte reaches the host.
        _byPolicy = true;
        Abort(now);
        return false;
    }

    /// <summary>
    /// Host → guest for a shaped flow: read into the delay line (when the rule has latency; it bounds what is read), and
    /// move what is due into the engine's send buffer as far as the rate and reset_after_bytes allow.
    /// </summary>
    private void ShapedHostToGuest(Shape s, long now)
    {
        DelayLine delay = s.Delay ??= new DelayLine(0, 0, Random.Shared);
        while (_canRecv && !s.HostEof && !delay.Full)
        {
            byte[] buffer = delay.Rent();
            int n = _socket.Receive(buffer, System.Net.Sockets.SocketFlags.None, out System.Net.Sockets.SocketError err);
            if (err == System.Net.Sockets.SocketError.WouldBlock)
            {
                delay.Add(buffer, 0, now);
                _canRecv = false;
                break;
            }
            if (err != System.Net.Sockets.SocketError.Success)
            {
                delay.Add(buffer, 0, now);
                Abort(now);
                return;
            }
            if (n == 0)
            {
                s.HostEof = true;
            }
            else if (_flow is not null)
            {
                _flow.BytesIn += n;
                _tap?.FromHost(buffer.AsSpan(0, n));
            }
            delay.Add(buffer, n, now);
        }
        while (_phase == Phase.Running && _c.CanWrite)
        {
            ReadOnlySpan<byte> due = delay.Due(now);
            if (due.IsEmpty)
            {
                if (delay.NextDue != long.MaxValue)
                {
                    _nat.WakeAt(this, delay.NextDue);
                }
                break;
            }
            int n = Math.Min(Remaining(s, due.Length), _c.Writable);
            if (s.In is { } bucket && n > 0)
            {
                n = bucket.Allow(n, now);
                if (n == 0)
                {
                    _nat.WakeAt(this, bucket.ReadyAt(due.Length, now));
                    break;
                }
                bucket.Take(n);
            }
            if (n == 0)
            {
                break; // The engine's buffer is full: TcpWritable runs this again.
            }
            _c.Write(due[..n], now);
            delay.Consume(n);
            Moved(s, n, now);
        }
        if (s.HostEof && delay.IsEmpty && _phase == Phase.Running)
        {
            _c.Shutdown(now);
            _hostDone = true;
        }
    }

    private void DisposeShape()
    {
        _shape?.Delay?.Dispose();
    }

    private FlowEnd Ended(bool abortive) => _byPolicy ? FlowEnd.Policy : abortive ? FlowEnd.Rst : FlowEnd.Fin;
}
