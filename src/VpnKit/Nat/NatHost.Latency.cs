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

    /// <summary>
    /// Sends <paramref name="payload"/> now, or, when <paramref name="rule"/> has a latency or jitter, a copy of it once
    /// due (see the class comment). <paramref name="send"/> is static and its state a value, so a datagram that goes at
    /// once allocates nothing.
    /// </summary>
    private void SendOrHold<TState>(PolicyRule? rule, ReadOnlySpan<byte> payload, TState state, System.Buffers.ReadOnlySpanAction<byte, TState> send)
    {
        if (rule is not { Impair: { LatencyMs: > 0 } or { JitterMs: > 0 } })
        {
            send(payload, state);
            return;
        }
        if (_heldBytes + payload.Length > DelayLine.Cap)
        {
            return;
        }
        byte[] bytes = payload.ToArray();
        int jitter = rule.Impair.JitterMs > 0 ? Random.Shared.Next(-rule.Impair.JitterMs, rule.Impair.JitterMs + 1) : 0;
        _held.Enqueue((() => send(bytes, state), bytes.Length), (EngineGate.Now + Math.Max(0, rule.Impair.LatencyMs + jitter), _heldOrder++));
        _heldBytes += bytes.Length;
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
