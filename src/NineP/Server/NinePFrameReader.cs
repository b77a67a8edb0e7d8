using System.Buffers;
using System.Buffers.Binary;
using Kit.NineP.Protocol;

namespace Kit.NineP.Server;

/// <summary>How reading one frame ended.</summary>
public enum FrameStatus
{
    /// <summary>A whole frame is in <see cref="NinePFrameReader.Frame"/>.</summary>
    Frame,

    /// <summary>The stream ended cleanly between frames.</summary>
    EndOfStream,

    /// <summary>The size field is below the header or above the limit: the stream cannot be resynchronised.</summary>
    BadSize,

    /// <summary>The stream ended inside a frame.</summary>
    Truncated,
}

/// <summary>
/// Cuts a byte stream into 9P messages (intro(5)), and does nothing else: the connection that decodes and answers
/// them is separate, as Kestrel keeps Http2FrameReader apart from Http2Connection.
/// <code>
///  0               4      5         7
/// +---------------+------+---------+------------------------+
/// |   size[4] LE  |type[1]| tag[2] |  body[size - 7]        |
/// +---------------+------+---------+------------------------+
/// </code>
/// size counts itself. A frame below 7 bytes or above the limit (the negotiated msize; before Tversion, the
/// server's ceiling) is a broken stream: there is no way to find the next frame, so the connection ends. The size
/// is checked before anything is allocated, so a frame costs at most the limit. One buffer is reused; a frame is
/// valid until the next read.
/// </summary>
public sealed class NinePFrameReader(Stream stream) : IDisposable
{
    private readonly byte[] _header = new byte[4];
    private byte[] _buffer = ArrayPool<byte>.Shared.Rent(8192);
    private int _length;

    /// <summary>The last frame read, header included.</summary>
    public ReadOnlyMemory<byte> Frame => _buffer.AsMemory(0, _length);

    /// <summary>Why the last read failed, for the log.</summary>
    public string Reason { get; private set; } = "";

    /// <summary>Whether a frame of <paramref name="size"/> bytes is acceptable under <paramref name="limit"/>; else why not.</summary>
    public static bool CheckSize(uint size, uint limit, out string reason)
    {
        reason = size < P9.HeaderSize || size > limit ? $"frame size {size} outside [{P9.HeaderSize}, {limit}]" : "";
        return reason.Length == 0;
    }

    public async ValueTask<FrameStatus> ReadAsync(uint limit, CancellationToken ct)
    {
        _length = 0;
        if (!await ReadExactlyAsync(_header, ct).ConfigureAwait(false))
        {
            Reason = "end of stream";
            return FrameStatus.EndOfStream;
        }
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(_header);
        if (!CheckSize(size, limit, out string reason))
        {
            Reason = reason;
            return FrameStatus.BadSize;
        }
        if (_buffer.Length < size)
        {
            ArrayPool<byte>.Shared.Return(_buffer);
            _buffer = ArrayPool<byte>.Shared.Rent((int)size);
        }
        _header.CopyTo(_buffer, 0);
        if (!await ReadExactlyAsync(_buffer.AsMemory(4, (int)size - 4), ct).ConfigureAwait(false))
        {
            Reason = "truncated frame";
            return FrameStatus.Truncated;
        }
        _length = (int)size;
        return FrameStatus.Frame;
    }

    private async ValueTask<bool> ReadExactlyAsync(Memory<byte> buffer, CancellationToken ct)
    {
        try
        {
            await stream.ReadExactlyAsync(buffer, ct).ConfigureAwait(false);
            return true;
        }
        catch (EndOfStreamException)
        {
            return false;
        }
    }

    public void Dispose()
    {
        byte[] buffer = Interlocked.Exchange(ref _buffer, []);
        if (buffer.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }
}
