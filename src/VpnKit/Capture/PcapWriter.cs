using System.Buffers.Binary;

namespace Kit.VpnKit.Capture;

/// <summary>
/// Writes frames in the classic libpcap format (magic 0xa1b2c3d4, version 2.4, LINKTYPE_ETHERNET = 1), which
/// tshark, tcpdump and Wireshark read. Thread-safe; frames are cut at the snap length.
/// </summary>
public sealed class PcapWriter : IDisposable
{
    private readonly Stream _out;
    private readonly object _gate = new();
    private readonly int _snap;
    private readonly byte[] _record = new byte[16];

    public PcapWriter(Stream output, int snapLength = 65535)
    {
        _out = output;
        _snap = snapLength;
        Span<byte> h = stackalloc byte[24];
        BinaryPrimitives.WriteUInt32LittleEndian(h, 0xa1b2c3d4);
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(4), 2);
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(6), 4);
        BinaryPrimitives.WriteInt32LittleEndian(h.Slice(8), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h.Slice(12), 0);
        BinaryPrimitives.WriteUInt32LittleEndian(h.Slice(16), (uint)snapLength);
        BinaryPrimitives.WriteUInt32LittleEndian(h.Slice(20), 1);
        _out.Write(h);
    }

    public void Write(ReadOnlySpan<byte> frame)
    {
        long micros = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / 10;
        int captured = Math.Min(frame.Length, _snap);
        lock (_gate)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(_record, (uint)(micros / 1_000_000));
            BinaryPrimitives.WriteUInt32LittleEndian(_record.AsSpan(4), (uint)(micros % 1_000_000));
            BinaryPrimitives.WriteUInt32LittleEndian(_record.AsSpan(8), (uint)captured);
            BinaryPrimitives.WriteUInt32LittleEndian(_record.AsSpan(12), (uint)frame.Length);
            _out.Write(_record);
            _out.Write(frame.Slice(0, captured));
        }
    }

    public void Flush()
    {
        lock (_gate)
        {
            _out.Flush();
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _out.Dispose();
        }
    }
}
