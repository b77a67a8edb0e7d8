using System.Buffers;

namespace Kit.VpnKit.Stack;

/// <summary>
/// A bounded byte FIFO whose storage is rented only while it holds data: an idle connection costs no buffer memory,
/// which keeps thousands of idle flows cheap.
/// </summary>
internal sealed class ByteRing(int capacity)
{
    private byte[]? _buffer;
    private int _head;

    public int Capacity { get; } = capacity;
    public int Count { get; private set; }
    public int Free => Capacity - Count;

    /// <summary>Appends as much of <paramref name="data"/> as fits; returns the count taken.</summary>
    public int Write(ReadOnlySpan<byte> data)
    {
        int n = Math.Min(data.Length, Free);
        if (n == 0)
        {
            return 0;
        }
        _buffer ??= ArrayPool<byte>.Shared.Rent(Capacity);
        int cap = Capacity;
        int tail = (_head + Count) % cap;
        int first = Math.Min(n, cap - tail);
        data.Slice(0, first).CopyTo(_buffer.AsSpan(tail));
        data.Slice(first, n - first).CopyTo(_buffer);
        Count += n;
        return n;
    }

    /// <summary>Copies bytes starting <paramref name="offset"/> bytes past the head, without consuming them.</summary>
    public int Peek(int offset, Span<byte> destination)
    {
        int n = Math.Min(destination.Length, Count - offset);
        if (n <= 0 || _buffer is null)
        {
            return 0;
        }
        int cap = Capacity;
        int start = (_head + offset) % cap;
        int first = Math.Min(n, cap - start);
        _buffer.AsSpan(start, first).CopyTo(destination);
        _buffer.AsSpan(0, n - first).CopyTo(destination.Slice(first));
        return n;
    }

    /// <summary>Drops <paramref name="n"/> bytes from the head; returns the storage to the pool when empty.</summary>
    public void Discard(int n)
    {
        n = Math.Min(n, Count);
        Count -= n;
        _head = Count == 0 ? 0 : (_head + n) % Capacity;
        if (Count == 0)
        {
            Release();
        }
    }

    /// <summary>The oldest bytes that lie contiguously in storage (all of them unless they wrap): to consume in place.</summary>
    public ReadOnlySpan<byte> FirstSegment()
    {
        if (Count == 0 || _buffer is null)
        {
            return default;
        }
        return _buffer.AsSpan(_head, Math.Min(Count, Capacity - _head));
    }

    /// <summary>
    /// Free storage right after the last byte, contiguous (up to the wrap): to fill in place, then
    /// <see cref="Commit"/> what was written. Rents the storage if the ring held nothing.
    /// </summary>
    public Span<byte> FreeSegment()
    {
        if (Free == 0)
        {
            return default;
        }
        _buffer ??= ArrayPool<byte>.Shared.Rent(Capacity);
        int tail = (_head + Count) % Capacity;
        int end = tail < _head || (tail == _head && Count > 0) ? _head : Capacity;
        return _buffer.AsSpan(tail, end - tail);
    }

    /// <summary>Appends <paramref name="n"/> bytes already written into <see cref="FreeSegment"/>.</summary>
    public void Commit(int n)
    {
        Count += Math.Clamp(n, 0, Free);
        if (Count == 0)
        {
            Release();
        }
    }

    public int Read(Span<byte> destination)
    {
        int n = Peek(0, destination);
        Discard(n);
        return n;
    }

    public void Clear()
    {
        Count = 0;
        _head = 0;
        Release();
    }

    private void Release()
    {
        if (_buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }
    }
}
