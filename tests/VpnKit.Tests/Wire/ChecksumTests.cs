using System.Buffers.Binary;
using CsCheck;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Wire;

public sealed class ChecksumTests
{
    // The straightforward RFC 1071 loop: 16-bit big-endian words, odd byte padded with zero.
    private static ushort Reference(ReadOnlySpan<byte> d)
    {
        uint sum = 0;
        for (int i = 0; i < d.Length; i += 2)
        {
            uint w = (uint)d[i] << 8;
            if (i + 1 < d.Length)
            {
                w |= d[i + 1];
            }
            sum += w;
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        return (ushort)~sum;
    }

    [Fact]
    public void GoldenIpv4Header()
    {
        // A well-known example header whose checksum field is 0xB861.
        byte[] h = Convert.FromHexString("450000730000400040110000c0a80001c0a800c7");
        Assert.Equal(0xB861, Checksum.Compute(h));
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(10), 0xB861);
        Assert.Equal(0, Checksum.Compute(h));
    }

    [Fact]
    public void MatchesReferenceForArbitraryData()
        => Gen.Byte.Array[0, 1600].Sample(d => Checksum.Compute(d) == Reference(d), iter: 3000);

    [Fact]
    public void SplitSumsAtEvenOffsetsCompose()
        => Gen.Byte.Array[0, 300].Select(Gen.Int[0, 150]).Sample((d, cut) =>
        {
            int c = Math.Min(cut * 2, d.Length & ~1);
            ulong s = Checksum.Add(Checksum.Add(0, d.AsSpan(0, c)), d.AsSpan(c));
            return Checksum.Finish(s) == Reference(d);
        }, iter: 2000);

    [Fact]
    public void IncrementalUpdateMatchesRecompute()
        => Gen.Byte.Array[20, 20].Select(Gen.UInt).Sample((h, newAddr) =>
        {
            BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(10), 0);
            ushort before = Checksum.Compute(h);
            BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(10), before);
            uint old = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
            BinaryPrimitives.WriteUInt32BigEndian(h.AsSpan(16), newAddr);
            ushort updated = Checksum.Update(before, old, newAddr);
            BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(10), updated);
            // One's-complement has two zeros; a verified header sums to 0 either way.
            return Checksum.Compute(h) == 0;
        }, iter: 2000);
}
