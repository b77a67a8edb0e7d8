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
        // The type byte is read and checked on its own, so a bad type or an oversize data frame is refused before
        // the reader waits for (or buffers) a payload it would throw away.
        if (await FillAsync(_prefix.AsMemory(0, 1), ct).ConfigureAwait(false) < 1)
        {
            throw new AgentProtocolException("connection ended inside a frame");
        }
        byte type = _prefix[0];
        int payloadLength = bodyLength - 1;
        if (Frames.Validate(type, payloadLength) is { } invalid)
        {
            throw new AgentProtocolException(invalid);
        }
        if (_body.Length < payloadLength)
        {
            ArrayPool<byte>.Shared.Return(_body);
            _body = [];
            _body = ArrayPool<byte>.Shared.Rent(payloadLength);
        }
        Memory<byte> payload = _body.AsMemory(0, payloadLength);
        if (await FillAsync(payload, ct).ConfigureAwait(false) < payloadLength)
        {
            throw new AgentProtocolException("connection ended inside a frame");
        }
        return new Frame((FrameType)type, payload);
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
