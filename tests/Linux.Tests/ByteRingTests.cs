using CsCheck;
using Kit.Buffers;

namespace Kit.Linux.Tests;

/// <summary>
/// The one byte ring HyperKit's vsock (kept storage, a producer filling a segment outside the lock) and VPNKit's TCP
/// buffers (pooled storage, one owner) share.
/// </summary>
public sealed class ByteRingTests
{
    [Fact]
    public void Kept_ring_keeps_order_across_the_wrap()
    {
        var ring = new ByteRing(8);
        Assert.Equal(6, ring.Write("abcdef"u8));
        byte[] out4 = new byte[4];
        Assert.Equal(4, ring.Read(out4));
        Assert.Equal("abcd"u8.ToArray(), out4);
        // Free space now wraps: 2 bytes at the end, 4 at the start.
        Assert.Equal(2, ring.WritableMemory.Length);
        Assert.Equal(2, ring.WritableSpan().Length);
        Assert.Equal(6, ring.Write("ghijklmn"u8));
        Assert.Equal(0, ring.Free);
        Assert.Equal(0, ring.WritableMemory.Length);
        Assert.Equal("efgh"u8.ToArray(), ring.ReadableMemory.ToArray());
        Assert.Equal("efgh"u8.ToArray(), ring.ReadableSpan().ToArray());
        byte[] all = new byte[8];
        Assert.Equal(8, ring.Read(all));
        Assert.Equal("efghijkl"u8.ToArray(), all);
        Assert.Equal(0, ring.Count);
        // An empty kept ring does not move its start back: a producer may be filling the segment it was handed.
        Memory<byte> segment = ring.WritableMemory;
        Assert.Equal(4, segment.Length); // from the start (4) to the end of the storage
        "xy"u8.CopyTo(segment.Span);
        ring.Commit(2);
        Assert.Equal("xy"u8.ToArray(), ring.ReadableMemory.ToArray());
    }

    [Fact]
    public void Pooled_ring_holds_storage_only_while_it_holds_data()
    {
        ByteRing ring = ByteRing.Pooled(8);
        Assert.True(ring.ReadableSpan().IsEmpty);
        Assert.Equal(0, ring.Peek(0, new byte[4]));
        Assert.Equal(6, ring.Write("abcdef"u8));
        ring.Consume(4);
        Assert.Equal(2, ring.WritableSpan().Length); // wraps: the tail runs to the end of the storage
        ring.Consume(2);
        // Empty: the storage went back to the pool and the next data starts at 0, all the room contiguous.
        Assert.Equal(8, ring.WritableSpan().Length);
        ring.Commit(0);
        Assert.True(ring.ReadableSpan().IsEmpty);
        "pq"u8.CopyTo(ring.WritableSpan());
        ring.Commit(2);
        Assert.Equal("pq"u8.ToArray(), ring.ReadableSpan().ToArray());
        ring.Clear();
        Assert.Equal(0, ring.Count);
        Assert.Equal(8, ring.Free);
    }

    [Fact]
    public void Pooled_ring_hands_out_no_memory()
    {
        ByteRing ring = ByteRing.Pooled(8);
        Assert.Throws<InvalidOperationException>(() => ring.WritableMemory);
        Assert.Throws<InvalidOperationException>(() => ring.ReadableMemory);
    }

    [Fact]
    public void Peek_reads_past_the_front_and_across_the_wrap_without_consuming()
    {
        ByteRing ring = ByteRing.Pooled(8);
        ring.Write("abcdef"u8);
        ring.Consume(5);
        ring.Write("ghijk"u8); // f at 5, g and h at 6 and 7, i to k at 0 to 2
        byte[] three = new byte[3];
        Assert.Equal(3, ring.Peek(2, three));
        Assert.Equal("hij"u8.ToArray(), three);
        Assert.Equal(6, ring.Count);
        Assert.Equal(0, ring.Peek(6, three));
    }

    [Fact]
    public void Commit_and_consume_are_clamped()
    {
        var ring = new ByteRing(4);
        ring.Commit(10);
        Assert.Equal(4, ring.Count);
        ring.Consume(-3);
        Assert.Equal(4, ring.Count);
        ring.Consume(10);
        Assert.Equal(0, ring.Count);
        ring.Commit(-1);
        Assert.Equal(0, ring.Count);
    }

    /// <summary>Both kinds against a plain queue: writes, in-place fills, peeks, reads and consumes in any order.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Behaves_as_a_bounded_fifo(bool pooled)
    {
        Gen.Select(Gen.Int[1, 40], Gen.Select(Gen.Int[0, 4], Gen.Int[0, 50]).Array[0, 60]).Sample((capacity, ops) =>
        {
            ByteRing ring = pooled ? ByteRing.Pooled(capacity) : new ByteRing(capacity);
            var model = new List<byte>();
            byte next = 0;
            foreach ((int op, int n) in ops)
            {
                switch (op)
                {
                    case 0:
                        byte[] data = new byte[n];
                        for (int i = 0; i < n; i++)
                        {
                            data[i] = next++;
                        }
                        int taken = ring.Write(data);
                        if (taken != Math.Min(n, capacity - model.Count))
                        {
                            return false;
                        }
                        model.AddRange(data.AsSpan(0, taken).ToArray());
                        break;
                    case 1:
                        Span<byte> space = ring.WritableSpan();
                        int fill = Math.Min(n, space.Length);
                        for (int i = 0; i < fill; i++)
                        {
                            space[i] = next;
                            model.Add(next++);
                        }
                        ring.Commit(fill);
                        break;
                    case 2:
                        byte[] peeked = new byte[n];
                        int offset = n % (model.Count + 1);
                        int got = ring.Peek(offset, peeked);
                        if (!peeked.AsSpan(0, got).SequenceEqual(model.Skip(offset).Take(n).ToArray()) || got != Math.Min(n, model.Count - offset))
                        {
                            return false;
                        }
                        break;
                    case 3:
                        byte[] read = new byte[n];
                        int count = ring.Read(read);
                        if (!read.AsSpan(0, count).SequenceEqual(model.Take(n).ToArray()))
                        {
                            return false;
                        }
                        model.RemoveRange(0, count);
                        break;
                    default:
                        if (!ring.ReadableSpan().SequenceEqual(model.Take(ring.ReadableSpan().Length).ToArray()))
                        {
                            return false;
                        }
                        int drop = Math.Min(n, model.Count);
                        ring.Consume(n);
                        model.RemoveRange(0, drop);
                        break;
                }
                if (ring.Count != model.Count || ring.Free != capacity - model.Count)
                {
                    return false;
                }
            }
            return true;
        });
    }
}
