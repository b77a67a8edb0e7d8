using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Text;
using Kit.HyperKit.Memory;
using Kit.NineP.Protocol;

namespace Kit.HyperKit.Devices.Virtio.NineP;

/// <summary>
/// virtio-9p (device ID 9, "9P transport", in virtio 1.2 section 5's table; the virtio spec gives it no chapter, so the
/// contract is Linux's net/9p/trans_virtio.c and QEMU's hw/9pfs/virtio-9p-device.c): one request queue; each chain
/// carries one T-message in its readable part and receives the R-message in its writable part. The config space is
/// {tag_len u16, tag[tag_len]} (feature VIRTIO_9P_MOUNT_TAG, bit 0); the guest mounts with
/// <c>mount -t 9p -o trans=virtio TAG /mnt</c>.
///
/// The device is a relay: it checks each T-message's framing, forwards it to a <see cref="NinePChannel"/> (any 9P
/// server on a socket) and keeps the chain by tag until the reply comes back, in whatever order the server answers.
/// The built-in host-directory server is an <see cref="IInlineNinePChannel"/>: it answers at once, in the same
/// Process call (like virtio-blk's file I/O), so a request costs no thread hand-off. Replies are written into guest memory only from <see cref="Process"/>, under
/// the transport's lock, through <see cref="VirtioDevice.ProcessQueue"/>. In flight is bounded by the queue size (a
/// chain is a request). A malformed request is answered with an error here and never reaches the server; a backend
/// that disappears fails every pending and later request with EIO (the VMM keeps running) until the guest mounts
/// again (a new Tversion opens a new connection).
/// </summary>
public sealed class VirtioNineP : VirtioDevice, IDisposable
{
    public const ulong FeatureMountTag = 1UL << 0;
    public const int MaxTagLength = 255;

    /// <summary>Largest message relayed either way; Tversion's msize is clamped to it (Linux asks for at most ~500 KiB).</summary>
    public const int MaxMessage = 1024 * 1024;

    private const int NoFlush = -1;
    private readonly NinePChannelFactory _factory;
    private readonly byte[] _config;
    private readonly DescriptorSegment[] _segments = new DescriptorSegment[SplitQueue.MaxSize];
    private readonly Dictionary<ushort, Pending> _pending = [];
    private readonly ConcurrentQueue<Completion> _completions = new();
    private NinePChannel? _channel;
    private int _generation;
    private bool _dead;
    private Dialect _dialect = Dialect.Linux;

    public VirtioNineP(string tag, NinePChannelFactory factory)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(tag);
        if (bytes.Length is 0 or > MaxTagLength)
        {
            throw new ArgumentException($"9P mount tag must be 1..{MaxTagLength} bytes", nameof(tag));
        }
        Tag = tag;
        _factory = factory;
        _config = new byte[2 + bytes.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(_config, (ushort)bytes.Length);
        bytes.CopyTo(_config, 2);
    }

    public string Tag { get; }

    public override ushort DeviceType => 9;

    public override ulong DeviceFeatures => VirtioFeatures.Version1 | FeatureMountTag;

    public override int QueueCount => 1;

    /// <summary>Requests relayed to the backend.</summary>
    public long Forwarded { get; private set; }

    /// <summary>Requests answered by the device itself with an error (malformed, backend gone, reply too large).</summary>
    public long LocalErrors { get; private set; }

    /// <summary>Replies with no matching request in flight (a confused or hostile server), dropped.</summary>
    public long StrayReplies { get; private set; }

    /// <summary>Requests waiting for their reply (under the transport lock; for tests).</summary>
    public int InFlight => _pending.Count;

    public override void ReadConfig(int offset, Span<byte> data) => ReadImage(_config, offset, data);

    private sealed class Pending(ushort head, DescriptorSegment[] segments, int count, long writable, int flushOf)
    {
        public ushort Head { get; } = head;
        public DescriptorSegment[] Segments { get; } = segments;
        public int Count { get; } = count;
        public long Writable { get; } = writable;
        public int FlushOf { get; } = flushOf;
    }

    /// <summary>A reply (or, with a null buffer, the end of the backend) from channel generation <c>Generation</c>.</summary>
    private readonly record struct Completion(int Generation, byte[]? Reply, int Length, string? Closed);

    private sealed class Sink(VirtioNineP device, int generation) : INinePReplySink
    {
        public void OnReply(ReadOnlySpan<byte> message)
        {
            byte[] copy = ArrayPool<byte>.Shared.Rent(message.Length);
            message.CopyTo(copy);
            device._completions.Enqueue(new Completion(generation, copy, message.Length, null));
            device.ProcessQueue(0);
        }

        public void OnClosed(string reason)
        {
            device._completions.Enqueue(new Completion(generation, null, 0, reason));
            device.ProcessQueue(0);
        }
    }

    /// <summary>The reason the backend went away, if it did (for logs and tests).</summary>
    public string? BackendClosedReason { get; private set; }

    public override bool Process(int index, SplitQueue queue, GuestMemory memory)
    {
        bool used = CompleteReplies(queue, memory);
        while (queue.TryPop(_segments, out ushort head, out int count, out long readable, out long writable))
        {
            used = true;
            Accept(queue, memory, head, count, readable, writable);
        }
        return used;
    }

    private bool CompleteReplies(SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        while (_completions.TryDequeue(out Completion c))
        {
            try
            {
                if (c.Generation != _generation)
                {
                    continue; // from a channel of before a reset or reconnect
                }
                if (c.Reply is null)
                {
                    BackendClosedReason = c.Closed;
                    _dead = true;
                    used |= FailAllPending(queue, memory);
                    continue;
                }
                ReadOnlySpan<byte> reply = c.Reply.AsSpan(0, c.Length);
                if (!FcallCodec.TryReadHeader(reply, out _, out MessageType type, out ushort tag) || !_pending.Remove(tag, out Pending? p))
                {
                    StrayReplies++;
                    continue;
                }
                if (type == MessageType.Rflush && p.FlushOf != NoFlush && _pending.Remove((ushort)p.FlushOf, out Pending? flushed))
                {
                    // flush(5): the server will never answer the flushed tag. Give its buffers back empty first, as
                    // QEMU does; Linux's req_done ignores a zero-length completion.
                    Complete(queue, memory, flushed, []);
                }
                if (type == MessageType.Rversion)
                {
                    _dialect = DialectOf(reply);
                }
                if (c.Length <= p.Writable)
                {
                    Complete(queue, memory, p, reply);
                }
                else
                {
                    // A reply larger than the guest's buffer (a server ignoring msize or count): an error instead.
                    CompleteWithError(queue, memory, p, tag, Errno.EIO);
                }
                used = true;
            }
            finally
            {
                if (c.Reply is not null)
                {
                    ArrayPool<byte>.Shared.Return(c.Reply);
                }
            }
        }
        return used;
    }

    private bool FailAllPending(SplitQueue queue, GuestMemory memory)
    {
        if (_pending.Count == 0)
        {
            return false;
        }
        foreach ((ushort tag, Pending p) in _pending)
        {
            CompleteWithError(queue, memory, p, tag, Errno.EIO);
        }
        _pending.Clear();
        return true;
    }

    private void Accept(SplitQueue queue, GuestMemory memory, ushort head, int count, long readable, long writable)
    {
        ReadOnlySpan<DescriptorSegment> chain = _segments.AsSpan(0, count);
        var cursor = new ChainCursor(chain, memory);
        Span<byte> header = stackalloc byte[P9.HeaderSize];
        if (readable < P9.HeaderSize || cursor.Read(header) < P9.HeaderSize)
        {
            // Not even a tag to answer to: hand the buffers back empty.
            LocalErrors++;
            queue.PushUsed(head, 0);
            return;
        }
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(header);
        var type = (MessageType)header[4];
        ushort tag = BinaryPrimitives.ReadUInt16LittleEndian(header[5..]);
        uint refusal = 0;
        if (size < P9.HeaderSize || size > readable)
        {
            refusal = Errno.EINVAL; // a size field that lies about the message
        }
        else if (size > MaxMessage)
        {
            refusal = Errno.EMSGSIZE;
        }
        else if (!FcallCodec.IsKnown(type) || ((byte)type & 1) != 0)
        {
            refusal = Errno.EOPNOTSUPP;
        }
        else if (_pending.ContainsKey(tag))
        {
            refusal = Errno.EINVAL; // the tag is still in flight: the guest broke tag uniqueness
        }
        else if (_dead && type != MessageType.Tversion)
        {
            refusal = Errno.EIO;
        }
        if (refusal != 0)
        {
            LocalErrors++;
            WriteError(queue, memory, head, chain, tag, refusal);
            return;
        }
        byte[] message = ArrayPool<byte>.Shared.Rent((int)size);
        header.CopyTo(message);
        cursor.Read(message.AsSpan(P9.HeaderSize, (int)size - P9.HeaderSize));
        if (!WellFormed(message.AsSpan(0, (int)size), type))
        {
            ArrayPool<byte>.Shared.Return(message);
            LocalErrors++;
            WriteError(queue, memory, head, chain, tag, Errno.EINVAL);
            return;
        }
        int flushOf = NoFlush;
        if (type == MessageType.Tversion)
        {
            // The guest sizes its buffers from msize; never let it exceed what this relay carries.
            uint msize = BinaryPrimitives.ReadUInt32LittleEndian(message.AsSpan(7));
            BinaryPrimitives.WriteUInt32LittleEndian(message.AsSpan(7), Math.Min(msize, (uint)MaxMessage));
            if (_dead || _channel is null)
            {
                Connect();
            }
        }
        else if (type == MessageType.Tflush)
        {
            flushOf = BinaryPrimitives.ReadUInt16LittleEndian(message.AsSpan(7));
        }
        if (_channel is null)
        {
            Connect();
        }
        if (_channel is IInlineNinePChannel inline)
        {
            ReadOnlySpan<byte> reply = inline.Handle(message.AsMemory(0, (int)size));
            ArrayPool<byte>.Shared.Return(message);
            Forwarded++;
            if (reply.Length < P9.HeaderSize || reply.Length > writable)
            {
                LocalErrors++;
                WriteError(queue, memory, head, chain, tag, Errno.EIO);
                return;
            }
            if (type == MessageType.Tversion)
            {
                _dialect = DialectOf(reply);
            }
            var writer = new ChainCursor(chain, memory);
            writer.Write(reply);
            queue.PushUsed(head, writer.Written);
            return;
        }
        DescriptorSegment[] kept = ArrayPool<DescriptorSegment>.Shared.Rent(count);
        chain.CopyTo(kept);
        _pending[tag] = new Pending(head, kept, count, writable, flushOf);
        if (!_channel!.TrySend(message, (int)size))
        {
            _pending.Remove(tag);
            ArrayPool<DescriptorSegment>.Shared.Return(kept);
            LocalErrors++;
            WriteError(queue, memory, head, chain, tag, Errno.EIO);
            return;
        }
        Forwarded++;
    }

    /// <summary>Checks the body of a T-message against its type (bulk messages by their fixed layout).</summary>
    private bool WellFormed(ReadOnlySpan<byte> message, MessageType type)
    {
        switch (type)
        {
            case MessageType.Tread:
            case MessageType.Treaddir:
                return message.Length == 23;
            case MessageType.Twrite:
                return message.Length >= 23 && BinaryPrimitives.ReadUInt32LittleEndian(message[19..]) == (uint)(message.Length - 23);
            default:
                return FcallCodec.TryDecode(message, _dialect, out _, out _);
        }
    }

    private static Dialect DialectOf(ReadOnlySpan<byte> rversion) =>
        FcallCodec.TryDecode(rversion, Dialect.Legacy, out Fcall r, out _) ? r.Version switch
        {
            P9.VersionL => Dialect.Linux,
            P9.VersionU => Dialect.Unix,
            _ => Dialect.Legacy,
        } : Dialect.Linux;

    private void Connect()
    {
        DisposeChannel();
        _generation++;
        _dead = false;
        BackendClosedReason = null;
        _channel = _factory();
        _channel.Start(new Sink(this, _generation));
    }

    private void DisposeChannel()
    {
        NinePChannel? old = _channel;
        _channel = null;
        old?.Dispose();
    }

    private static void Complete(SplitQueue queue, GuestMemory memory, Pending p, ReadOnlySpan<byte> reply)
    {
        var cursor = new ChainCursor(p.Segments.AsSpan(0, p.Count), memory);
        cursor.Write(reply);
        queue.PushUsed(p.Head, cursor.Written);
        ArrayPool<DescriptorSegment>.Shared.Return(p.Segments);
    }

    private void CompleteWithError(SplitQueue queue, GuestMemory memory, Pending p, ushort tag, uint errno)
    {
        LocalErrors++;
        WriteError(queue, memory, p.Head, p.Segments.AsSpan(0, p.Count), tag, errno);
        ArrayPool<DescriptorSegment>.Shared.Return(p.Segments);
    }

    /// <summary>Answers a chain with an error in the session's dialect (.L Rlerror; .u/legacy Rerror).</summary>
    private void WriteError(SplitQueue queue, GuestMemory memory, ushort head, ReadOnlySpan<DescriptorSegment> chain, ushort tag, uint errno)
    {
        Span<byte> reply = stackalloc byte[64];
        Fcall error = _dialect == Dialect.Linux
            ? new Fcall { Type = MessageType.Rlerror, Tag = tag, Errno = errno }
            : new Fcall { Type = MessageType.Rerror, Tag = tag, Errno = errno, Ename = ErrorText(errno) };
        int n = FcallCodec.Encode(error, _dialect, reply);
        var cursor = new ChainCursor(chain, memory);
        long writable = 0;
        foreach (DescriptorSegment s in chain)
        {
            writable += s.DeviceWritable ? s.Length : 0;
        }
        if (n > 0 && n <= writable)
        {
            cursor.Write(reply[..n]);
        }
        queue.PushUsed(head, cursor.Written);
    }

    /// <summary>The strings Linux maps back to errno for 9P2000/.u (net/9p/error.c).</summary>
    private static string ErrorText(uint errno) => errno switch
    {
        Errno.EIO => "Input/output error",
        Errno.EINVAL => "Invalid argument",
        Errno.EMSGSIZE => "Message too long",
        Errno.EOPNOTSUPP => "Operation not supported",
        _ => "Input/output error",
    };

    public override void Reset()
    {
        base.Reset();
        // The driver is gone: its chains are forgotten (the rings are reset too), the backend session with them.
        foreach (Pending p in _pending.Values)
        {
            ArrayPool<DescriptorSegment>.Shared.Return(p.Segments);
        }
        _pending.Clear();
        DisposeChannel();
        _generation++;
        _dead = false;
        _dialect = Dialect.Linux;
    }

    /// <summary>VM shutdown: closes the backend (the transport may still be running Process; it sees EIO at worst).</summary>
    public void Dispose() => Volatile.Read(ref _channel)?.Dispose();
}
