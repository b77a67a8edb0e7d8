using System.Buffers;

namespace Kit.Agent.Protocol;

/// <summary>
/// Reads frames from a stream, exactly one frame's bytes at a time (never past a frame's end, so after a ForwardUnix
/// request or its Ok the stream holds only raw bytes). Bad bytes raise <see cref="AgentProtocolException"/> and
/// nothing else; transport failures stay <see cref="IOException"/>. Not thread-safe: one reader per stream.
/// </summary>
public sealed class FrameReader : IDisposable
{
    private readonly Stream _stream;
    private readonly byte[] _prefix = new byte[Frames.LengthSize];
    private byte[] _body;

    public FrameReader(Stream stream)
    {
        _stream = stream;
        // Most frames are small control messages; the buffer grows to the largest frame seen (at most MaxFrame).
        _body = ArrayPool<byte>.Shared.Rent(4096);
    }

    /// <summary>The next frame, or null when the stream ended cleanly between frames.</summary>
    public async ValueTask<Frame?> ReadAsync(CancellationToken ct)
    {
        int got = await FillAsync(_prefix, ct).ConfigureAwait(false);
        if (got == 0)
        {
            return null;
        }
        if (got < _prefix.Length)
        {
            throw new AgentProtocolException("connection ended inside a frame's length");
        }
        if (!Frames.TryParseLength(_prefix, out int bodyLength, out string? reason))
        {
            throw new AgentProtocolException(reason!);
        }
        if (_body.Length < bodyLength)
        {
            ArrayPool<byte>.Shared.Return(_body);
            _body = [];
            _body = ArrayPool<byte>.Shared.Rent(bodyLength);
        }
        Memory<byte> body = _body.AsMemory(0, bodyLength);
        if (await FillAsync(body, ct).ConfigureAwait(false) < bodyLength)
        {
            throw new AgentProtocolException("connection ended inside a frame");
        }
        byte type = body.Span[0];
        if (Frames.Validate(type, bodyLength - 1) is { } invalid)
        {
            throw new AgentProtocolException(invalid);
        }
        return new Frame((FrameType)type, body[1..]);
    }

    /// <summary>Reads until <paramref name="buffer"/> is full or the stream ends; the number of bytes read.</summary>
    private async ValueTask<int> FillAsync(Memory<byte> buffer, CancellationToken ct)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await _stream.ReadAsync(buffer[total..], ct).ConfigureAwait(false);
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        return total;
    }

    public void Dispose()
    {
        byte[] body = _body;
        _body = [];
        if (body.Length > 0)
        {
            ArrayPool<byte>.Shared.Return(body);
        }
    }
}
