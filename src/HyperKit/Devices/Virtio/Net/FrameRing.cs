using System.Buffers.Binary;

namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>
/// A bounded byte ring of variable-length records for one producer and one consumer at a time (callers serialize
/// producers among themselves). The producer reserves room and fills it in place (straight from guest memory), the
/// consumer reads records in place and releases them: a frame crosses between threads with no copy of its own.
/// A record is a 4-byte length then the bytes, padded to 4; a record never wraps (a length of -1, or fewer than 4
/// bytes left, means "continue at offset 0").
/// </summary>
public sealed class FrameRing
{
    private const int WrapMarker = -1;
    private readonly byte[] _buffer;
    private readonly object _gate = new();
    private long _write, _read;
    private long _reservedAt = -1;
    private int _reservedLength;
    private bool _closed;
    private bool _consumerWaiting;
    private bool _producerStalled;
    private bool _producerWaiting;

    public FrameRing(int capacity)
    {
        if (capacity < 1024 || capacity % 4 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(capacity));
        }
        _buffer = new byte[capacity];
    }

    public int Capacity => _buffer.Length;

    /// <summary>Called (outside the ring's lock) when a stalled producer may try again: half the ring is free.</summary>
    public Action? SpaceAvailable { get; set; }

    public bool IsEmpty
    {
        get
        {
            lock (_gate)
            {
                return _read == _write;
            }
        }
    }

    private static int Padded(int length) => 4 + ((length + 3) & ~3);

    /// <summary>Room for a record of <paramref name="length"/> bytes, or an empty span (and the producer is marked stalled).</summary>
    public Span<byte> Reserve(int length)
    {
        if (length < 0 || Padded(length) > _buffer.Length / 2)
        {
            return default;
        }
        lock (_gate)
        {
            if (_closed)
            {
                return default;
            }
            long free = _buffer.Length - (_write - _read);
            int offset = (int)(_write % _buffer.Length);
            int skip = offset + Padded(length) > _buffer.Length ? _buffer.Length - offset : 0;
            if (skip + Padded(length) > free)
            {
                _producerStalled = true;
                return default;
            }
            if (skip > 0)
            {
                if (skip >= 4)
                {
                    BinaryPrimitives.WriteInt32LittleEndian(_buffer.AsSpan(offset), WrapMarker);
                }
                // The skip is published with the record in Commit; until then the consumer does not look here.
                offset = 0;
            }
            _reservedAt = _write + skip;
            _reservedLength = length;
            return _buffer.AsSpan(offset + 4, length);
        }
    }

    /// <summary>
    /// Waits until a record of <paramref name="length"/> bytes could be reserved (the consumer released enough), for at
    /// most <paramref name="timeout"/>; false on timeout or when closed.
    /// </summary>
    public bool WaitForSpace(int length, TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_gate)
        {
            while (!_closed)
            {
                long free = _buffer.Length - (_write - _read);
                int offset = (int)(_write % _buffer.Length);
                int skip = offset + Padded(length) > _buffer.Length ? _buffer.Length - offset : 0;
                if (skip + Padded(length) <= free)
                {
                    return true;
                }
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    return false;
                }
                _producerWaiting = true;
                Monitor.Wait(_gate, (int)left);
                _producerWaiting = false;
            }
            return false;
        }
    }

    /// <summary>Publishes the reserved record with its final length (at most the reserved length).</summary>
    public void Commit(int length)
    {
        lock (_gate)
        {
            if (_reservedAt < 0 || length < 0 || length > _reservedLength)
            {
                _reservedAt = -1;
                return;
            }
            int offset = (int)(_reservedAt % _buffer.Length);
            BinaryPrimitives.WriteInt32LittleEndian(_buffer.AsSpan(offset), length);
            _write = _reservedAt + Padded(length);
            _reservedAt = -1;
            if (_consumerWaiting)
            {
                Monitor.Pulse(_gate);
            }
        }
    }

    /// <summary>Drops a reservation without publishing it.</summary>
    public void Abandon()
    {
        lock (_gate)
        {
            _reservedAt = -1;
        }
    }

    /// <summary>Convenience: copies <paramref name="a"/> then <paramref name="b"/> in as one record; false when full.</summary>
    public bool TryWrite(ReadOnlySpan<byte> a, ReadOnlySpan<byte> b)
    {
        Span<byte> room = Reserve(a.Length + b.Length);
        if (room.IsEmpty && a.Length + b.Length > 0)
        {
            return false;
        }
        a.CopyTo(room);
        b.CopyTo(room[a.Length..]);
        Commit(a.Length + b.Length);
        return true;
    }

    /// <summary>The oldest record, in place (valid until <see cref="Release"/>), or false when empty.</summary>
    public bool TryPeek(out Span<byte> record)
    {
        lock (_gate)
        {
            return PeekLocked(out record);
        }
    }

    /// <summary>Blocks for the next record; false once closed and empty.</summary>
    public bool WaitPeek(out Span<byte> record)
    {
        lock (_gate)
        {
            while (true)
            {
                if (PeekLocked(out record))
                {
                    return true;
                }
                if (_closed)
                {
                    return false;
                }
                _consumerWaiting = true;
                Monitor.Wait(_gate);
                _consumerWaiting = false;
            }
        }
    }

    private bool PeekLocked(out Span<byte> record)
    {
        record = default;
        while (_read != _write)
        {
            int offset = (int)(_read % _buffer.Length);
            int left = _buffer.Length - offset;
            int length = left >= 4 ? BinaryPrimitives.ReadInt32LittleEndian(_buffer.AsSpan(offset)) : WrapMarker;
            if (length == WrapMarker)
            {
                _read += left;
                continue;
            }
            record = _buffer.AsSpan(offset + 4, length);
            return true;
        }
        return false;
    }

    /// <summary>Frees the record returned by the last peek.</summary>
    public void Release()
    {
        Action? wake = null;
        lock (_gate)
        {
            if (!PeekLocked(out Span<byte> record))
            {
                return;
            }
            _read += Padded(record.Length);
            if (_producerWaiting)
            {
                Monitor.PulseAll(_gate);
            }
            if (_producerStalled && _buffer.Length - (_write - _read) >= _buffer.Length / 2)
            {
                _producerStalled = false;
                wake = SpaceAvailable;
            }
        }
        wake?.Invoke();
    }

    /// <summary>Drops every record (device reset).</summary>
    public void Clear()
    {
        lock (_gate)
        {
            _read = _write;
            _reservedAt = -1;
            _producerStalled = false;
        }
    }

    /// <summary>Wakes a waiting consumer for good.</summary>
    public void Close()
    {
        lock (_gate)
        {
            _closed = true;
            Monitor.PulseAll(_gate);
        }
    }
}
