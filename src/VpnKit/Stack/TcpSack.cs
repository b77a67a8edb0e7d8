using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>Room for the edges of <see cref="SackBlocks.MaxBlocks"/> blocks, inline (no allocation per ACK).</summary>
[InlineArray(2 * SackBlocks.MaxBlocks)]
internal struct SackEdges
{
    private uint _edge;
}

/// <summary>
/// The SACK option (RFC 2018 §3, kind 5): up to four blocks, each the left edge (first sequence number held) and the
/// right edge (the one after the last) of a run of bytes the receiver holds above its cumulative ACK. Four fit in
/// the 40 bytes of options with two NOPs to align them, and this socket sends no timestamps that would take room.
/// </summary>
internal struct SackBlocks
{
    public const int MaxBlocks = 4;
    private const byte Kind = 5;

    private SackEdges _edges;

    public int Count { get; private set; }

    public readonly uint Left(int i) => _edges[2 * i];

    public readonly uint Right(int i) => _edges[(2 * i) + 1];

    /// <summary>Appends a block; ignored once four are held.</summary>
    public void Add(uint left, uint right)
    {
        if (Count < MaxBlocks)
        {
            _edges[2 * Count] = left;
            _edges[(2 * Count) + 1] = right;
            Count++;
        }
    }

    /// <summary>Bytes <see cref="Write"/> produces: two NOPs, kind, length and 8 per block (a multiple of 4); 0 when empty.</summary>
    public readonly int WriteLength => Count == 0 ? 0 : 4 + (8 * Count);

    /// <summary>Writes NOP, NOP, then the option (RFC 2018 §3: length 2 + 8n); returns the byte count.</summary>
    public readonly int Write(Span<byte> b)
    {
        if (Count == 0)
        {
            return 0;
        }
        b[0] = 1;
        b[1] = 1;
        b[2] = Kind;
        b[3] = (byte)(2 + (8 * Count));
        for (int i = 0; i < Count; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.Slice(4 + (8 * i)), Left(i));
            BinaryPrimitives.WriteUInt32BigEndian(b.Slice(8 + (8 * i)), Right(i));
        }
        return WriteLength;
    }

    /// <summary>
    /// Finds the SACK option in a segment's option bytes. False when there is none or it is malformed: a length that is
    /// not 2 + 8n for n of 1 to 4, or one that runs past the options; then the segment's SACK information is ignored
    /// whole, as a receiver may (RFC 9293 §3.2 asks for robustness to bad options; a sender may ignore SACK, RFC 2018 §4).
    /// A malformed option before it ends the walk (<see cref="TcpOptionReader"/>).
    /// </summary>
    public static bool TryParse(ReadOnlySpan<byte> options, out SackBlocks blocks)
    {
        blocks = default;
        var reader = new TcpOptionReader(options);
        while (reader.Next(out byte kind, out ReadOnlySpan<byte> v))
        {
            if (kind != Kind)
            {
                continue;
            }
            if (v.Length == 0 || v.Length > 8 * MaxBlocks || v.Length % 8 != 0)
            {
                return false;
            }
            for (int at = 0; at < v.Length; at += 8)
            {
                blocks.Add(BinaryPrimitives.ReadUInt32BigEndian(v.Slice(at)), BinaryPrimitives.ReadUInt32BigEndian(v.Slice(at + 4)));
            }
            return true;
        }
        return false;
    }
}
