using Kit.VpnKit.Policy;

namespace Kit.VpnKit.Nat;

/// <summary>
/// latency_ms and jitter_ms for datagrams and echoes: what a guest sends under such a rule waits here until it is due,
/// then goes to the host. Each one is due at its arrival plus the latency plus a uniform jitter in ±jitter_ms, so
/// jitter reorders datagrams as a real path can (equal due times keep their order). Bounded like a TCP flow's delay
/// line: at <see cref="DelayLine.Cap"/> bytes held, a new datagram is dropped, as a full queue on a path would.
/// Runs under the engine lock; the event loop wakes for <see cref="HeldDeadline"/>.
/// </summary>
internal sealed partial class NatHost
{
    private readonly PriorityQueue<(Action Send, int Bytes), (long Due, long Order)> _held = new();
    private long _heldOrder;
    private int _heldBytes;

    /// <summary>Whether a datagram under <paramref name="rule"/> waits before it goes (else it goes now).</summary>
    private static bool Delays(PolicyRule? rule) => rule is { Impair: { LatencyMs: > 0 } or { JitterMs: > 0 } };

    /// <summary>Holds <paramref name="send"/> for the rule's latency ± jitter (see the class comment).</summary>
    private void Hold(PolicyRule rule, int bytes, Action send)
    {
        if (_heldBytes + bytes > DelayLine.Cap)
        {
            return;
        }
        long now = EngineGate.Now;
        int jitter = rule.Impair.JitterMs > 0 ? Random.Shared.Next(-rule.Impair.JitterMs, rule.Impair.JitterMs + 1) : 0;
        _held.Enqueue((send, bytes), (now + Math.Max(0, rule.Impair.LatencyMs + jitter), _heldOrder++));
        _heldBytes += bytes;
    }

    /// <summary>When the first held datagram is due (absolute ms), or long.MaxValue.</summary>
    private long HeldDeadline => _held.TryPeek(out _, out (long Due, long) p) ? p.Due : long.MaxValue;

    /// <summary>Sends every held datagram that is due.</summary>
    private void SendHeld(long now)
    {
        while (_held.TryPeek(out (Action Send, int Bytes) h, out (long Due, long) p) && p.Due <= now)
        {
            _held.Dequeue();
            _heldBytes -= h.Bytes;
            h.Send();
        }
    }
}
