using System.Buffers.Binary;

namespace Kit.NineP.Protocol;

/// <summary>
/// Writes little-endian 9P fields into a caller-provided span. Running out of room sets <see cref="Overflow"/>
/// instead of throwing, so encoders can size a reply against msize and fall back to an error reply.
/// </summary>
public ref struct WireWriter
{
    private readonly Span<byte> _buffer;
    private int _position;

    public WireWriter(Span<byte> buffer)
    {
        _buffer = buffer;
        _position = 0;
        Overflow = false;
    }

    public bool Overflow { get; private set; }
    public readonly int Position => _position;

    private Span<byte> Take(int count)
    {
        if (Overflow || count > _buffer.Length - _position)
        {
            Overflow = true;
            return default;
        }
        Span<byte> s = _buffer.Slice(_position, count);
        _position += count;
        return s;
    }

    public void U8(byte v)
    {
        Span<byte> s = Take(1);
        if (!Overflow)
        {
            s[0] = v;
        }
    }

    public void U16(ushort v)
    {
        Span<byte> s = Take(2);
        if (!Overflow)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(s, v);
        }
    }

    public void U32(uint v)
    {
        Span<byte> s = Take(4);
        if (!Overflow)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s, v);
        }
    }

    public void U64(ulong v)
    {
        Span<byte> s = Take(8);
        if (!Overflow)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s, v);
        }
    }

    public void Str(string v)
    {
        int length = NineString.GetByteCount(v);
        if (length > ushort.MaxValue)
        {
            Overflow = true;
            return;
        }
        U16((ushort)length);
        Span<byte> s = Take(length);
        if (!Overflow)
        {
            NineString.GetBytes(v, s);
        }
    }

    public void Qid(Qid q)
    {
        U8(q.Type);
        U32(q.Version);
        U64(q.Path);
    }

    public void Bytes(ReadOnlySpan<byte> data)
    {
        Span<byte> s = Take(data.Length);
        if (!Overflow)
        {
            data.CopyTo(s);
        }
    }

    /// <summary>Reserves room for a field filled in later (a size prefix); returns its offset.</summary>
    public int Reserve(int count)
    {
        int at = _position;
        Take(count);
        return at;
    }

    public readonly void PatchU16(int at, ushort v)
    {
        if (!Overflow)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(_buffer.Slice(at, 2), v);
        }
    }

    public readonly void PatchU32(int at, uint v)
    {
        if (!Overflow)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(_buffer.Slice(at, 4), v);
        }
    }
}
