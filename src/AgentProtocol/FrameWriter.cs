using System.Buffers;
using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;

namespace Kit.Agent.Protocol;

/// <summary>
/// Writes whole frames, one at a time: stdout, stderr and control frames come from different tasks and threads, and
/// a frame must never interleave with another. Each frame goes out in one write from a pooled buffer.
/// </summary>
internal sealed class FrameWriter
{
    private readonly Stream _stream;
    private readonly SemaphoreSlim _lock = new(1, 1);

    public FrameWriter(Stream stream)
    {
        _stream = stream;
    }

    public async ValueTask WriteAsync(FrameType type, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        byte[] frame = Build(type, payload.Span, out int length);
        try
        {
            await _lock.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                await _stream.WriteAsync(frame.AsMemory(0, length), ct).ConfigureAwait(false);
                await _stream.FlushAsync(ct).ConfigureAwait(false);
            }
            finally
            {
                _lock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
    }

    /// <summary>The blocking form, for the dedicated threads that pump a child's output.</summary>
    public void Write(FrameType type, ReadOnlySpan<byte> payload)
    {
        byte[] frame = Build(type, payload, out int length);
        try
        {
            _lock.Wait();
            try
            {
                _stream.Write(frame, 0, length);
                _stream.Flush();
            }
            finally
            {
                _lock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
    }

    public ValueTask WriteJsonAsync<T>(FrameType type, T value, JsonTypeInfo<T> info, CancellationToken ct) =>
        WriteAsync(type, JsonSerializer.SerializeToUtf8Bytes(value, info), ct);

    private static byte[] Build(FrameType type, ReadOnlySpan<byte> payload, out int length)
    {
        if (payload.Length + 1 > Frames.MaxFrame)
        {
            throw new ArgumentException($"payload of {payload.Length} bytes exceeds the frame bound", nameof(payload));
        }
        length = Frames.LengthSize + 1 + payload.Length;
        byte[] frame = ArrayPool<byte>.Shared.Rent(length);
        BinaryPrimitives.WriteUInt32LittleEndian(frame, (uint)(payload.Length + 1));
        frame[Frames.LengthSize] = (byte)type;
        payload.CopyTo(frame.AsSpan(Frames.LengthSize + 1));
        return frame;
    }
}
