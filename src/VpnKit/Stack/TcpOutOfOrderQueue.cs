using System.Buffers;
using Kit.Buffers;

namespace Kit.VpnKit.Stack;

/// <summary>What <see cref="TcpOutOfOrderQueue.Insert"/> did with a segment.</summary>
internal enum OutOfOrderResult
{
    /// <summary>Some of its bytes were new and are held.</summary>
    Held,

    /// <summary>Every byte of it was held already (a retransmission, or a hostile repeat).</summary>
    Duplicate,

    /// <summary>Nothing of it lies inside the window: dropped.</summary>
    OutsideWindow,

    /// <summary>It would open a run beyond <see cref="TcpOutOfOrderQueue.MaxRuns"/>: dropped, the guest resends it.</summary>
    Full,
}

/// <summary>
/// A receiver's out-of-order queue. RFC 9293 §3.10.7.4 (seventh step) lets a receiver hold segments that start past
/// RCV.NXT inside the window "for later processing"; without that, one lost segment costs everything sent after it
/// (go back N), and on an offloading link one lost 64 KiB frame costs a whole window. Bytes are held by sequence number
/// in runs (sorted, disjoint, never touching: adjacent ones merge) until the hole before them fills
/// (<see cref="Drain"/>); the runs are what the SACK option reports (RFC 2018), the newest first.
/// Bounds (the guest is hostile): bytes only inside the window the receiver advertised and below
/// <c>base + capacity</c> (the receive buffer's size, so at most that much memory, rented only while something is
/// held), and at most <see cref="MaxRuns"/> runs, so a spray of one-byte islands cannot grow the bookkeeping.
/// Overlaps and repeats: a byte already held is written again with what the newest segment carries (RFC 9293
/// leaves the choice to the receiver; a sender that sends different bytes for one sequence number gets either).
/// </summary>
internal sealed class TcpOutOfOrderQueue(int capacity)
{
    /// <summary>Separate runs held at most: twice the blocks one SACK option can report.</summary>
    public const int MaxRuns = 2 * SackBlocks.MaxBlocks;

    private readonly Run[] _runs = new Run[MaxRuns];
    private int _count;
    private byte[]? _buffer;
    /// <summary>The sequence number of <c>_buffer[0]</c>: RCV.NXT when the queue last became non-empty.</summary>
    private uint _base;
    private uint _clock;

    /// <summary>A run of held bytes, as offsets from <see cref="_base"/>; <c>Stamp</c> orders runs by their latest arrival.</summary>
    private struct Run
    {
        public int Start;
        public int End;
        public uint Stamp;
    }

    public bool IsEmpty => _count == 0;

    public int RunCount => _count;

    /// <summary>Bytes held.</summary>
    public int Bytes
    {
        get
        {
            int n = 0;
            for (int i = 0; i < _count; i++)
            {
                n += _runs[i].End - _runs[i].Start;
            }
            return n;
        }
    }

    /// <summary>
    /// Holds the bytes of a segment at <paramref name="seq"/> that lie in [<paramref name="rcvNxt"/>,
    /// <paramref name="windowEdge"/>) (the caller passes the right edge it advertised, never more than its receive
    /// buffer can take), merging with the runs it touches.
    /// </summary>
    public OutOfOrderResult Insert(uint rcvNxt, uint windowEdge, uint seq, ReadOnlySpan<byte> data)
    {
        if (_count == 0)
        {
            _base = rcvNxt;
        }
        // Everything is compared as offsets from _base: the window is far below 2^31, so they cannot wrap.
        long lo = (int)(seq - _base);
        long hi = lo + data.Length;
        long floor = (int)(rcvNxt - _base);
        long ceiling = Math.Min((int)(windowEdge - _base), (long)capacity);
        if (lo < floor)
        {
            data = data.Slice((int)Math.Min(floor - lo, data.Length));
            lo = floor;
        }
        if (hi > ceiling)
        {
            hi = ceiling;
        }
        if (hi <= lo)
        {
            return OutOfOrderResult.OutsideWindow;
        }
        int s = (int)lo;
        int e = (int)hi;
        data = data.Slice(0, e - s);

        // The runs it touches (overlapping or adjacent) are [first, last); they merge into one.
        int first = 0;
        while (first < _count && _runs[first].End < s)
        {
            first++;
        }
        int last = first;
        while (last < _count && _runs[last].Start <= e)
        {
            last++;
        }
        bool duplicate = last - first == 1 && _runs[first].Start <= s && e <= _runs[first].End;
        int touched = last - first;
        if (touched == 0 && _count == MaxRuns)
        {
            return OutOfOrderResult.Full;
        }
        _buffer ??= ArrayPool<byte>.Shared.Rent(capacity);
        data.CopyTo(_buffer.AsSpan(s));
        var merged = new Run { Start = s, End = e, Stamp = ++_clock };
        if (touched > 0)
        {
            merged.Start = Math.Min(s, _runs[first].Start);
            merged.End = Math.Max(e, _runs[last - 1].End);
        }
        // Replace runs [first, last) by the merged one, keeping the array sorted.
        int shift = 1 - touched;
        if (shift != 0)
        {
            Array.Copy(_runs, last, _runs, last + shift, _count - last);
            _count += shift;
        }
        _runs[first] = merged;
        return duplicate ? OutOfOrderResult.Duplicate : OutOfOrderResult.Held;
    }

    /// <summary>
    /// Moves the held bytes that now continue the stream at <paramref name="rcvNxt"/> into <paramref name="into"/>
    /// (as far as it has room), forgets runs that lie wholly below it, and returns the new RCV.NXT.
    /// </summary>
    public uint Drain(uint rcvNxt, ByteRing into)
    {
        int at = (int)(rcvNxt - _base);
        while (_count > 0 && _runs[0].Start <= at)
        {
            if (_runs[0].End > at)
            {
                int n = into.Write(_buffer!.AsSpan(at, _runs[0].End - at));
                at += n;
                if (at < _runs[0].End)
                {
                    _runs[0].Start = at; // No room for the rest yet: it stays held.
                    break;
                }
            }
            RemoveFirst();
        }
        if (_count == 0)
        {
            Clear();
        }
        return _base + (uint)at;
    }

    /// <summary>The runs as SACK blocks (absolute sequence numbers), the newest first (RFC 2018 §4), at most four.</summary>
    public SackBlocks Sack()
    {
        var blocks = new SackBlocks();
        uint newerThan = uint.MaxValue;
        for (int k = 0; k < SackBlocks.MaxBlocks && k < _count; k++)
        {
            // Selection by stamp: the runs are few, so this beats keeping a second order.
            int best = -1;
            for (int i = 0; i < _count; i++)
            {
                if (_runs[i].Stamp < newerThan && (best < 0 || _runs[i].Stamp > _runs[best].Stamp))
                {
                    best = i;
                }
            }
            newerThan = _runs[best].Stamp;
            blocks.Add(_base + (uint)_runs[best].Start, _base + (uint)_runs[best].End);
        }
        return blocks;
    }

    /// <summary>Forgets everything held and returns the storage.</summary>
    public void Clear()
    {
        _count = 0;
        if (_buffer is not null)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = null;
        }
    }

    private void RemoveFirst()
    {
        Array.Copy(_runs, 1, _runs, 0, _count - 1);
        _count--;
    }
}
