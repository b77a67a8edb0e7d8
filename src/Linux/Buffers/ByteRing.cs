using System.Buffers;

namespace Kit.Buffers;

/// <summary>
/// A bounded byte FIFO over one circular buffer. Nothing here is Linux-specific: it lives in the Kit.Linux leaf
/// because that is the one project HyperKit (vsock's per-connection buffers) and VPNKit (TCP send and receive
/// buffers) both reference.
/// </summary>
/// <remarks>
/// <para>Two ways to hold the storage, chosen at creation:</para>
/// <list type="bullet">
/// <item><c>new ByteRing(capacity)</c> allocates it once and keeps it. A producer may then fill
/// <see cref="WritableMemory"/> without a lock (a socket receive, for instance) while the consumer reads the readable
/// part; only <see cref="Commit"/> and <see cref="Consume"/> must be serialized by the owner's lock. For that reason
/// the start never jumps back to 0 when the ring empties.</item>
/// <item><see cref="Pooled"/> rents it from <see cref="ArrayPool{T}.Shared"/> only while the ring holds data (or while
/// a caller fills <see cref="WritableSpan"/>): an idle connection costs no buffer memory, which keeps thousands of idle
/// flows cheap. The storage goes back to the pool when the ring empties, so a pooled ring has one owner that does
/// everything on its own thread, and hands out spans only (the Memory segments throw).</item>
/// </list>
/// </remarks>
public sealed class ByteRing
{
    private readonly bool _pooled;
    private byte[]? _buffer;
    private int _start;

    /// <summary>A ring whose storage is allocated now and kept; see the remarks for what that allows.</summary>
    public ByteRing(int capacity)
        : this(capacity, pooled: false)
    {
    }

    private ByteRing(int capacity, bool pooled)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(capacity);
        Capacity = capacity;
        _pooled = pooled;
        _buffer = pooled ? null : new byte[capacity];
    }

    /// <summary>A ring whose storage is rented from the shared pool only while it holds data.</summary>
    public static ByteRing Pooled(int capacity) => new(capacity, pooled: true);

    public int Capacity { get; }

    public int Count { get; private set; }

    public int Free => Capacity - Count;

    /// <summary>The contiguous data at the front, to consume in place (all of it unless it wraps).</summary>
    public ReadOnlySpan<byte> ReadableSpan()
    {
        if (Count == 0 || _buffer is null)
        {
            return default;
        }
        return _buffer.AsSpan(_start, Math.Min(Count, Capacity - _start));
    }

    /// <summary>
    /// The contiguous free space right after the data (shorter than <see cref="Free"/> when it wraps): fill it in place,
    /// then <see cref="Commit"/> what was written. A pooled ring rents its storage here if it held nothing.
    /// </summary>
    public Span<byte> WritableSpan()
    {
        if (Free == 0)
        {
            return default;
        }
        _buffer ??= ArrayPool<byte>.Shared.Rent(Capacity);
        (int at, int length) = WritableRange();
        return _buffer.AsSpan(at, length);
    }

    /// <summary><see cref="ReadableSpan"/> as memory, for a consumer that writes it out asynchronously (kept storage only).</summary>
    public ReadOnlyMemory<byte> ReadableMemory => KeptBuffer().AsMemory(_start, Math.Min(Count, Capacity - _start));

    /// <summary><see cref="WritableSpan"/> as memory, for a producer that fills it asynchronously (kept storage only).</summary>
    public Memory<byte> WritableMemory
    {
        get
        {
            byte[] buffer = KeptBuffer();
            (int at, int length) = WritableRange();
            return buffer.AsMemory(at, length);
        }
    }

    /// <summary>Appends <paramref name="count"/> bytes already written into the writable segment (clamped to <see cref="Free"/>).</summary>
    public void Commit(int count)
    {
        Count += Math.Clamp(count, 0, Free);
        if (Count == 0)
        {
            Release();
        }
    }

    /// <summary>Drops <paramref name="count"/> bytes from the front (clamped to <see cref="Count"/>).</summary>
    public void Consume(int count)
    {
        count = Math.Clamp(count, 0, Count);
        Count -= count;
        // Kept storage: the start never jumps back to 0, because the producer may be filling the segment it was given.
        // Pooled storage goes back to the pool when empty, so the next data starts at 0 with all the room contiguous.
        _start = _pooled && Count == 0 ? 0 : (_start + count) % Capacity;
        if (Count == 0)
        {
            Release();
        }
    }

    /// <summary>Copies in as much of <paramref name="data"/> as fits (both segments if the free space wraps); returns how much.</summary>
    public int Write(ReadOnlySpan<byte> data)
    {
        int n = Math.Min(data.Length, Free);
        if (n == 0)
        {
            return 0;
        }
        _buffer ??= ArrayPool<byte>.Shared.Rent(Capacity);
        int tail = (_start + Count) % Capacity;
        int first = Math.Min(n, Capacity - tail);
        data[..first].CopyTo(_buffer.AsSpan(tail));
        data[first..n].CopyTo(_buffer);
        Count += n;
        return n;
    }

    /// <summary>Copies bytes starting <paramref name="offset"/> bytes past the front, without consuming them; returns how many.</summary>
    public int Peek(int offset, Span<byte> destination)
    {
        int n = Math.Min(destination.Length, Count - offset);
        if (n <= 0 || _buffer is null)
        {
            return 0;
        }
        int at = (_start + offset) % Capacity;
        int first = Math.Min(n, Capacity - at);
        _buffer.AsSpan(at, first).CopyTo(destination);
        _buffer.AsSpan(0, n - first).CopyTo(destination[first..]);
        return n;
    }

    /// <summary>Copies up to destination.Length bytes out and consumes them; returns how many.</summary>
    public int Read(Span<byte> destination)
    {
        int n = Peek(0, destination);
        Consume(n);
        return n;
    }

    /// <summary>Empties the ring (a pooled ring returns its storage); not for a ring a producer may be filling.</summary>
    public void Clear()
    {
        Count = 0;
        _start = 0;
        Release();
    }

    private (int At, int Length) WritableRange()
    {
        int tail = (_start + Count) % Capacity;
        // The free space runs from the tail to the start when the data wraps (or fills the ring), else to the end.
        int end = tail < _start || (tail == _start && Count > 0) ? _start : Capacity;
        return (tail, end - tail);
    }

    private byte[] KeptBuffer() =>
        _pooled ? throw new InvalidOperationException("a pooled ring hands out spans only: its storage may go back to the pool") : _buffer!;

    private void Release()
    {
        if (_pooled && _buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }
    }
}
