using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Kit.VpnKit.Wire;

/// <summary>
/// The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
/// The one's-complement sum is byte-order independent (RFC 1071 §2(B)), so the fast path adds native-endian
/// 32-bit words into a 64-bit accumulator and swaps once at the end instead of per word.
/// </summary>
internal static class Checksum
{
    /// <summary>Adds <paramref name="data"/> to a running (unfolded, network-order) sum.</summary>
    public static ulong Add(ulong sum, ReadOnlySpan<byte> data)
    {
        // Accumulate native-endian words; fold and swap back to network order at the end.
        ulong acc = 0;
        ReadOnlySpan<uint> words = MemoryMarshal.Cast<byte, uint>(data);
        // 2^32 words of 2^32 cannot overflow 64 bits for any span a packet can hold.
        int n = words.Length;
        int j = 0;
        for (; j + 4 <= n; j += 4)
        {
            acc += (ulong)words[j] + words[j + 1] + words[j + 2] + words[j + 3];
        }
        for (; j < n; j++)
        {
            acc += words[j];
        }
        int i = n * 4;
        // Tail: up to three bytes, in network order relative to the span's start (offset i is a multiple of 4).
        ulong tail = 0;
        if (i + 1 < data.Length)
        {
            tail = (ulong)BinaryPrimitives.ReadUInt16BigEndian(data.Slice(i)) << 16;
            i += 2;
            if (i < data.Length)
            {
                tail += (ulong)data[i] << 8;
            }
        }
        else if (i < data.Length)
        {
            tail = (ulong)data[i] << 24;
        }
        uint native = Fold32(acc);
        uint network = BitConverter.IsLittleEndian ? SwapHalves(native) : native;
        return sum + network + tail;
    }

    /// <summary>Adds a 16-bit value in host order (as read with a big-endian reader) to the sum.</summary>
    public static ulong Add(ulong sum, ushort value) => sum + value;

    /// <summary>Adds a 32-bit value (for example an IPv4 address in host order) to the sum.</summary>
    public static ulong Add(ulong sum, uint value) => sum + (value >> 16) + (value & 0xFFFF);

    /// <summary>The IPv4 pseudo-header of RFC 9293 §3.1 / RFC 768: source, destination, zero, protocol, length.</summary>
    public static ulong PseudoHeader(uint source, uint destination, byte protocol, int length)
        => Add(Add(0, source), destination) + protocol + (uint)length;

    /// <summary>
    /// The IPv6 pseudo-header of RFC 8200 §8.1 (TCP, UDP and ICMPv6 over IPv6): source, destination, upper-layer length
    /// (32 bits), three zero bytes and the next header.
    /// </summary>
    public static ulong PseudoHeader6(UInt128 source, UInt128 destination, byte nextHeader, int length)
    {
        ulong sum = 0;
        foreach (UInt128 a in (ReadOnlySpan<UInt128>)[source, destination])
        {
            sum = Add(Add(Add(Add(sum, (uint)(a >> 96)), (uint)(a >> 64)), (uint)(a >> 32)), (uint)a);
        }
        return Add(sum, (uint)length) + nextHeader;
    }

    /// <summary>Folds a running sum to 16 bits and complements it: the value that goes on the wire.</summary>
    public static ushort Finish(ulong sum)
    {
        while ((sum >> 16) != 0)
        {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        return (ushort)~sum;
    }

    /// <summary>The checksum of one span on its own.</summary>
    public static ushort Compute(ReadOnlySpan<byte> data) => Finish(Add(0, data));

    /// <summary>
    /// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'). Updates a checksum after one 16-bit field changed from
    /// <paramref name="oldValue"/> to <paramref name="newValue"/> without touching the rest of the packet.
    /// </summary>
    public static ushort Update(ushort checksum, ushort oldValue, ushort newValue)
    {
        ulong sum = (ushort)~checksum + (ulong)(ushort)~oldValue + newValue;
        return Finish(sum);
    }

    /// <summary>RFC 1624 update for a changed 32-bit field (an address), as two 16-bit halves.</summary>
    public static ushort Update(ushort checksum, uint oldValue, uint newValue)
    {
        ulong sum = (ushort)~checksum
            + (ulong)(ushort)~(oldValue >> 16) + (ushort)~(oldValue & 0xFFFF)
            + (newValue >> 16) + (newValue & 0xFFFF);
        return Finish(sum);
    }

    private static uint Fold32(ulong acc)
    {
        acc = (acc & 0xFFFFFFFF) + (acc >> 32);
        acc = (acc & 0xFFFFFFFF) + (acc >> 32);
        // Fold 32 -> 16 within native order (the halves are both native-endian 16-bit lanes).
        uint v = (uint)acc;
        v = (v & 0xFFFF) + (v >> 16);
        v = (v & 0xFFFF) + (v >> 16);
        return v;
    }

    // After folding, the 16-bit native lane holds a byte-swapped network sum on little-endian machines.
    private static uint SwapHalves(uint v) => BinaryPrimitives.ReverseEndianness((ushort)v);
}
