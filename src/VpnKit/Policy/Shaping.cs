using System.Buffers;

namespace Kit.VpnKit.Policy;

/// <summary>
/// A token bucket (RFC 2697's single-rate idea) for <c>rate_kbps</c> on one direction of a flow. On a TCP flow it never
/// drops: the proxy moves only what the bucket allows and waits for the refill, and TCP's own back-pressure (the
/// engine's window toward the guest, the socket buffer toward the host) slows the sender to the rate. On a UDP flow it
/// polices (<see cref="TryTake"/>): a datagram goes if the bucket holds it and is dropped otherwise, since datagrams
/// have no back-pressure and queueing them would only grow a queue. Time is passed in (ms).
/// </summary>
public sealed class TokenBucket
{
    /// <summary>Below this the proxy waits rather than send a dribble (unless the data itself is smaller).</summary>
    public const int MinChunk = 1024;

    private readonly double _bytesPerMs;
    private readonly double _burst;
    private double _tokens;
    private long _last;

    public TokenBucket(long rateKbps, long now)
    {
        _bytesPerMs = rateKbps / 8.0; // kilobits (1000 bits) per second = bytes per millisecond × 8
        // It starts with 20 ms of rate (at least 16 KiB): small enough that the first burst is lost in a measurement of
        // seconds. It holds up to 100 ms of rate: the gateway sees traffic when its event loop runs, and on a loaded host
        // that loop can pause for tens of milliseconds and then take a backlog at one instant; a bucket that capped at
        // 20 ms lost the rate of every longer pause (UDP under a 5,000 kbps rule measured 3.5 Mbit/s on a loaded machine).
        _burst = Math.Max(16 * 1024, _bytesPerMs * 100);
        _tokens = Math.Max(16 * 1024, _bytesPerMs * 20);
        _last = now;
    }

    /// <summary>How many of <paramref name="want"/> bytes may go now (0: wait until <see cref="ReadyAt"/>).</summary>
    public int Allow(int want, long now)
    {
        Refill(now);
        int whole = (int)Math.Min(_tokens, int.MaxValue);
        return whole >= Math.Min(want, MinChunk) ? Math.Min(want, whole) : 0;
    }

    public void Take(int n) => _tokens -= n;

    /// <summary>
    /// Polices one datagram of <paramref name="n"/> bytes: true (and its tokens taken) if it conforms. A datagram larger than
    /// the burst conforms when the bucket is full and leaves it in debt, so the long-run rate still holds and no size is
    /// refused for ever.
    /// </summary>
    public bool TryTake(int n, long now)
    {
        Refill(now);
        if (_tokens < Math.Min(n, _burst))
        {
            return false;
        }
        _tokens -= n;
        return true;
    }

    /// <summary>When <see cref="Allow"/> will give at least <see cref="MinChunk"/> (or <paramref name="want"/>) bytes.</summary>
    public long ReadyAt(int want, long now)
    {
        double missing = Math.Min(want, MinChunk) - _tokens;
        return now + Math.Max(1, (long)Math.Ceiling(missing / _bytesPerMs));
    }

    private void Refill(long now)
    {
        if (now > _last)
        {
            _tokens = Math.Min(_burst, _tokens + ((now - _last) * _bytesPerMs));
            _last = now;
        }
    }
}

/// <summary>
/// A delay line for <c>latency_ms</c>/<c>jitter_ms</c>: bytes read from the host wait here until they are due, then go
/// to the guest. Order is kept (a stream: a later chunk is never due before an earlier one, whatever its jitter), and
/// memory is bounded by <see cref="Cap"/>: when full the proxy stops reading the host socket, whose window then closes.
/// </summary>
public sealed class DelayLine(int latencyMs, int jitterMs, Random random) : IDisposable
{
    public const int Cap = 1 << 20;
    private const int Chunk = 64 * 1024;

    private sealed class Entry
    {
        public required byte[] Buffer;
        public int Offset;
        public int Length;
        public long Due;
    }

    private readonly Queue<Entry> _queue = new();
    private long _lastDue;

    /// <summary>Bytes waiting.</summary>
    public int Bytes { get; private set; }

    public bool Full => Bytes >= Cap;

    public bool IsEmpty => _queue.Count == 0;

    /// <summary>A buffer for the next read (return it with <see cref="Add"/>, even for 0 bytes).</summary>
    public byte[] Rent() => ArrayPool<byte>.Shared.Rent(Math.Min(Chunk, Math.Max(1, Cap - Bytes)));

    /// <summary>Bytes read at <paramref name="now"/> into <paramref name="buffer"/> from <see cref="Rent"/>.</summary>
    public void Add(byte[] buffer, int length, long now)
    {
        if (length <= 0)
        {
            ArrayPool<byte>.Shared.Return(buffer);
            return;
        }
        long due = now + latencyMs + (jitterMs > 0 ? random.NextInt64(-jitterMs, jitterMs + 1) : 0);
        due = Math.Max(due, Math.Max(now, _lastDue));
        _lastDue = due;
        _queue.Enqueue(new Entry { Buffer = buffer, Length = length, Due = due });
        Bytes += length;
    }

    /// <summary>When the oldest bytes are due; long.MaxValue when none wait.</summary>
    public long NextDue => _queue.TryPeek(out Entry? e) ? e.Due : long.MaxValue;

    /// <summary>The oldest bytes, if due at <paramref name="now"/>; empty otherwise.</summary>
    public ReadOnlySpan<byte> Due(long now) =>
        _queue.TryPeek(out Entry? e) && e.Due <= now ? e.Buffer.AsSpan(e.Offset, e.Length) : default;

    /// <summary>Drops the first <paramref name="n"/> bytes of <see cref="Due"/>'s span (they went to the guest).</summary>
    public void Consume(int n)
    {
        Entry e = _queue.Peek();
        e.Offset += n;
        e.Length -= n;
        Bytes -= n;
        if (e.Length == 0)
        {
            ArrayPool<byte>.Shared.Return(_queue.Dequeue().Buffer);
        }
    }

    public void Dispose()
    {
        while (_queue.TryDequeue(out Entry? e))
        {
            ArrayPool<byte>.Shared.Return(e.Buffer);
        }
        Bytes = 0;
    }
}
