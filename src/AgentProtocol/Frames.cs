using System.Buffers.Binary;

namespace Kit.Agent.Protocol;

/// <summary>
/// The frame format: <c>u32 little-endian length</c> (of the type byte and the payload), <c>u8 type</c>, payload.
/// Bounds are checked before anything is allocated, so a peer cannot make a reader hold more than <see cref="MaxFrame"/>.
/// </summary>
public static class Frames
{
    /// <summary>The largest length a frame may declare (type byte + payload).</summary>
    public const int MaxFrame = 1 << 20;

    /// <summary>The largest payload of a Stdin, Stdout or Stderr frame.</summary>
    public const int MaxData = 64 * 1024;

    /// <summary>Bytes before the type: the little-endian length.</summary>
    public const int LengthSize = 4;

    /// <summary>
    /// Reads the length prefix: the body length (type + payload) when it is within bounds, else false and why.
    /// </summary>
    public static bool TryParseLength(ReadOnlySpan<byte> prefix, out int bodyLength, out string? reason)
    {
        bodyLength = 0;
        if (prefix.Length < LengthSize)
        {
            reason = "short length prefix";
            return false;
        }
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(prefix);
        if (length == 0)
        {
            reason = "frame of length 0 (every frame has a type byte)";
            return false;
        }
        if (length > MaxFrame)
        {
            reason = $"frame of length {length} exceeds the {MaxFrame}-byte bound";
            return false;
        }
        bodyLength = (int)length;
        reason = null;
        return true;
    }

    /// <summary>Checks a frame's type byte and payload size: null when acceptable, else the reason.</summary>
    public static string? Validate(byte type, int payloadLength)
    {
        if (!Enum.IsDefined((FrameType)type))
        {
            return $"unknown frame type 0x{type:x2}";
        }
        return (FrameType)type switch
        {
            FrameType.Stdin or FrameType.Stdout or FrameType.Stderr when payloadLength > MaxData =>
                $"{(FrameType)type} frame of {payloadLength} bytes exceeds the {MaxData}-byte data bound",
            FrameType.Ok or FrameType.WatchPorts or FrameType.Shutdown or FrameType.StdinClose when payloadLength != 0 =>
                $"{(FrameType)type} frame carries {payloadLength} unexpected bytes",
            _ => null,
        };
    }
}

/// <summary>One frame as read: its type and payload. The payload is the reader's buffer, valid until its next read.</summary>
public readonly record struct Frame(FrameType Type, ReadOnlyMemory<byte> Payload);
