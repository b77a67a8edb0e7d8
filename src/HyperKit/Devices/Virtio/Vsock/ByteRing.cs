namespace Kit.HyperKit.Devices.Virtio.Vsock;

/// <summary>
/// A fixed-capacity byte ring with one producer and one consumer. The producer may fill <see cref="WritableSegment"/>
/// without a lock (for example with a socket receive) while the consumer reads the readable part; only
/// <see cref="Commit"/> and <see cref="Consume"/> must be serialized by the owner's lock.
/// </summary>
public sealed class ByteRing(int capacity)
{
    private readonly byte[] _buffer = new byte[capacity];
    private int _start;
    private int _count;

    public int Capacity => _buffer.Length;

    public int Count => _count;

    public int Free => _buffer.Length - _count;

    /// <summary>The contiguous free space after the data (may be shorter than <see cref="Free"/> when it wraps).</summary>
    public Memory<byte> WritableSegment
    {
        get
        {
            int end = (_start + _count) % _buffer.Length;
            int length = end >= _start && _count < _buffer.Length ? _buffer.Length - end : _buffer.Length - _count;
            return _buffer.AsMemory(end, Math.Min(length, Free));
        }
    }

    /// <summary>The contiguous data at the front (may be shorter than <see cref="Count"/> when it wraps).</summary>
    public ReadOnlyMemory<byte> ReadableSegment => _buffer.AsMemory(_start, Math.Min(_count, _buffer.Length - _start));

    public void Commit(int count) => _count += Math.Clamp(count, 0, Free);

    public void Consume(int count)
    {
        count = Math.Clamp(count, 0, _count);
        _start = (_start + count) % _buffer.Length;
        // _start never jumps back to 0 when the ring empties: the producer may be filling the segment it was given.
        _count -= count;
    }

    /// <summary>Copies bytes in (both segments if the free space wraps); returns how many fitted.</summary>
    public int Write(ReadOnlySpan<byte> data)
    {
        int done = 0;
        while (done < data.Length && Free > 0)
        {
            Span<byte> target = WritableSegment.Span;
            int n = Math.Min(target.Length, data.Length - done);
            data.Slice(done, n).CopyTo(target);
            Commit(n);
            done += n;
        }
        return done;
    }

    /// <summary>Copies up to destination.Length bytes out and consumes them; returns how many.</summary>
    public int Read(Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length && _count > 0)
        {
            ReadOnlySpan<byte> source = ReadableSegment.Span;
            int n = Math.Min(source.Length, destination.Length - done);
            source[..n].CopyTo(destination[done..]);
            Consume(n);
            done += n;
        }
        return done;
    }
}
