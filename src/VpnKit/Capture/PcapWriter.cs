using System.Buffers.Binary;

namespace Kit.VpnKit.Capture;

/// <summary>
/// Writes frames in the classic libpcap format (magic 0xa1b2c3d4, version 2.4, LINKTYPE_ETHERNET = 1), which
/// tshark, tcpdump and Wireshark read. Thread-safe; frames are cut at the snap length. Frames are buffered and the
/// buffer goes to the file at most <see cref="FlushInterval"/> after a frame arrives, so `tshark -r` and `tail -f`
/// see the capture while it runs, without a write system call per frame at line rate.
/// </summary>
public sealed class PcapWriter : IDisposable
{
    private readonly Stream _out;
    private readonly object _gate = new();
    private readonly int _snap;
    private readonly byte[] _record = new byte[RecordHeaderLength];
    private readonly Timer _flusher;
    private bool _dirty;

    /// <summary>Longest time a captured frame stays in the buffer.</summary>
    public static readonly TimeSpan FlushInterval = TimeSpan.FromMilliseconds(200);

    public PcapWriter(Stream output, int snapLength = 65535)
    {
        _out = output;
        _snap = snapLength;
        Span<byte> h = stackalloc byte[FileHeaderLength];
        WriteFileHeader(h, snapLength);
        _out.Write(h);
        _out.Flush();
        _flusher = new Timer(_ => FlushIfDirty(), null, FlushInterval, FlushInterval);
    }

    public const int FileHeaderLength = 24;
    public const int RecordHeaderLength = 16;

    /// <summary>The global header: magic, version 2.4, zone 0, sigfigs 0, snap length, LINKTYPE_ETHERNET.</summary>
    public static void WriteFileHeader(Span<byte> h, int snapLength)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(h, 0xa1b2c3d4);
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(4), 2);
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(6), 4);
        BinaryPrimitives.WriteInt32LittleEndian(h.Slice(8), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h.Slice(12), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h.Slice(16), (uint)snapLength);
        BinaryPrimitives.WriteUInt32LittleEndian(h.Slice(20), 1);
    }

    /// <summary>A record header stamped now: seconds, microseconds, bytes captured, bytes on the wire.</summary>
    public static void WriteRecordHeader(Span<byte> r, int captured, int original) => WriteRecordHeader(r, captured, original, NowMicros());

    /// <summary>Microseconds since the Unix epoch: a record's time stamp.</summary>
    public static long NowMicros() => (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;

    /// <summary>A record header stamped <paramref name="micros"/> (a frame seen earlier and written now keeps its time).</summary>
    public static void WriteRecordHeader(Span<byte> r, int captured, int original, long micros)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(r, (uint)(micros / 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(r.Slice(4), (uint)(micros % 1_000_000));
        BinaryPrimitives.WriteUInt32LittleEndian(r.Slice(8), (uint)captured);
        BinaryPrimitives.WriteUInt32LittleEndian(r.Slice(12), (uint)original);
    }

    public void Write(ReadOnlySpan<byte> frame)
    {
        int captured = Math.Min(frame.Length, _snap);
        lock (_gate)
        {
            WriteRecordHeader(_record, captured, frame.Length);
            _out.Write(_record);
            _out.Write(frame.Slice(0, captured));
            _dirty = true;
        }
    }

    public void Flush()
    {
        lock (_gate)
        {
            _out.Flush();
        }
    }

    private void FlushIfDirty()
    {
        lock (_gate)
        {
            if (_dirty && _out.CanWrite)
            {
                try
                {
                    _out.Flush();
                    _dirty = false;
                }
                catch (IOException)
                {
                    // A full disk: the frames stay buffered and the capture path's next write reports it.
                }
            }
        }
    }

    public void Dispose()
    {
        _flusher.Dispose();
        lock (_gate)
        {
            _out.Dispose();
        }
    }
}
