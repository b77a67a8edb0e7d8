using System.Buffers.Binary;

namespace Kit.NineP.Protocol;

/// <summary>
/// A cursor over untrusted little-endian 9P bytes. It never throws: once a read runs past the end,
/// <see cref="Ok"/> turns false and every further read returns a default value, so a decoder
/// reads a whole body and checks once at the end.
/// </summary>
public ref struct WireReader
{
    private readonly ReadOnlySpan<byte> _buffer;
    private int _position;

    public WireReader(ReadOnlySpan<byte> buffer)
    {
        _buffer = buffer;
        _position = 0;
        Ok = true;
    }

    public bool Ok { get; private set; }
    public readonly int Position => _position;
    public readonly int Remaining => _buffer.Length - _position;

    private ReadOnlySpan<byte> Take(int count)
    {
        if (!Ok || count < 0 || count > _buffer.Length - _position)
        {
            Ok = false;
            return default;
        }
        ReadOnlySpan<byte> span = _buffer.Slice(_position, count);
        _position += count;
        return span;
    }

    public byte U8()
    {
        ReadOnlySpan<byte> s = Take(1);
        return Ok ? s[0] : (byte)0;
    }

    public ushort U16()
    {
        ReadOnlySpan<byte> s = Take(2);
        return Ok ? BinaryPrimitives.ReadUInt16LittleEndian(s) : (ushort)0;
    }

    public uint U32()
    {
        ReadOnlySpan<byte> s = Take(4);
        return Ok ? BinaryPrimitives.ReadUInt32LittleEndian(s) : 0;
    }

    public ulong U64()
    {
        ReadOnlySpan<byte> s = Take(8);
        return Ok ? BinaryPrimitives.ReadUInt64LittleEndian(s) : 0;
    }

    /// <summary>len[2] + bytes, decoded losslessly (<see cref="NineString"/>): a host file name need not be UTF-8.</summary>
    public string Str()
    {
        ushort length = U16();
        ReadOnlySpan<byte> s = Take(length);
        if (!Ok)
        {
            return "";
        }
        return length == 0 ? "" : NineString.Decode(s);
    }

    public Qid Qid()
    {
        byte type = U8();
        uint version = U32();
        ulong path = U64();
        return new Qid(type, version, path);
    }

    /// <summary>Raw bytes; the count was checked against the remaining buffer, so no oversized allocation happens.</summary>
    public ReadOnlySpan<byte> Bytes(int count) => Take(count);

    public void Fail() => Ok = false;
}
