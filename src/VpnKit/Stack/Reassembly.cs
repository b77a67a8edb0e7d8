using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>What identifies one datagram's fragments: RFC 791 §3.2 (with the protocol) and RFC 8200 §4.5 (without).</summary>
internal readonly record struct FragmentKey(UInt128 Source, UInt128 Destination, uint Id, byte Protocol);

/// <summary>
/// Fragment reassembly for both IP families, with RFC 815's idea of tracking what is still missing, here as a bitmap of
/// 8-byte blocks. Bounded: at most <see cref="MaxDatagrams"/> datagrams in progress (the oldest is dropped for a new one),
/// 65,535 bytes each, buffers allocated once per slot and reused; an incomplete datagram is dropped
/// <see cref="TimeoutMs"/> after its first fragment (RFC 791 suggests 15 s, RFC 8200 §4.5 says 60 s; Linux uses 30 s
/// for both). The caller writes its family's header in the room left before the payload. Pure: time is passed in.
/// </summary>
/// <param name="headerRoom">Bytes left before the payload for the caller's header.</param>
/// <param name="maxPayload">The most payload a datagram may carry.</param>
/// <param name="strictOverlaps">
/// IPv6 (RFC 5722): a fragment that overlaps another, other than an exact duplicate, drops the whole datagram. IPv4
/// (RFC 791's procedure): overlapping bytes are accepted, later ones winning.
/// </param>
internal sealed class Reassembly(int headerRoom, int maxPayload, bool strictOverlaps)
{
    public const int MaxDatagrams = 16;
    public const long TimeoutMs = 30_000;

    private readonly Slot[] _slots = new Slot[MaxDatagrams];

    /// <summary>Datagrams given up: timed out, evicted for a newer one, or inconsistent.</summary>
    public long Dropped { get; private set; }

    private sealed class Slot(int headerRoom, int maxPayload)
    {
        public readonly byte[] Packet = new byte[headerRoom + maxPayload];
        public readonly ulong[] Have = new ulong[(((maxPayload + 7) / 8) + 63) / 64];
        public FragmentKey Key;
        public byte Hop, Next;
        public bool InUse, HaveFirst;
        public int Total = -1; // payload length, known once the last fragment (MF=0 / M=0) arrived
        public int BlocksHave;
        public long Expires;

        public void Reset()
        {
            InUse = HaveFirst = false;
            Total = -1;
            BlocksHave = 0;
            Array.Clear(Have);
        }
    }

    /// <summary>
    /// Adds one fragment: <paramref name="data"/> at byte <paramref name="offset"/> of the datagram's payload,
    /// <paramref name="more"/> unless it is the last. <paramref name="hop"/> and <paramref name="next"/> (TTL or hop
    /// limit; the protocol after the headers) are kept from the first fragment. When this completes the datagram, true
    /// with <paramref name="packet"/> the header room then the payload, and the first fragment's hop and next; the span
    /// is valid until the next call.
    /// </summary>
    public bool Add(FragmentKey key, int offset, bool more, ReadOnlySpan<byte> data, byte hop, byte next, long now,
        out Span<byte> packet, out byte firstHop, out byte firstNext)
    {
        packet = default;
        (firstHop, firstNext) = (0, 0);
        // RFC 791, RFC 8200 §4.5: every fragment but the last carries a multiple of 8 bytes; nothing may end past the most
        // a datagram can carry.
        if ((more && (data.Length == 0 || (data.Length & 7) != 0)) || offset + data.Length > maxPayload)
        {
            Dropped++;
            return false;
        }
        Slot? slot = Find(key, now);
        if (slot is null)
        {
            return false;
        }
        if (!more)
        {
            int total = offset + data.Length;
            if ((slot.Total >= 0 && slot.Total != total) || total < HighestBlockEnd(slot))
            {
                Drop(slot);
                return false;
            }
            slot.Total = total;
        }
        else if (slot.Total >= 0 && offset + data.Length > slot.Total)
        {
            Drop(slot);
            return false;
        }
        Span<byte> at = slot.Packet.AsSpan(headerRoom + offset, data.Length);
        int first = offset / 8, end = (offset + data.Length + 7) / 8;
        if (strictOverlaps && Overlaps(slot, first, end))
        {
            if (data.SequenceEqual(at) && All(slot, first, end))
            {
                return false; // an exact duplicate: ignored
            }
            Drop(slot);
            return false;
        }
        data.CopyTo(at);
        for (int b = first; b < end; b++)
        {
            ulong bit = 1UL << (b & 63);
            if ((slot.Have[b >> 6] & bit) == 0)
            {
                slot.Have[b >> 6] |= bit;
                slot.BlocksHave++;
            }
        }
        if (offset == 0)
        {
            slot.HaveFirst = true;
            (slot.Hop, slot.Next) = (hop, next);
        }
        if (slot.Total < 0 || !slot.HaveFirst || slot.BlocksHave != (slot.Total + 7) / 8)
        {
            return false;
        }
        packet = slot.Packet.AsSpan(0, headerRoom + slot.Total);
        (firstHop, firstNext) = (slot.Hop, slot.Next);
        slot.Reset(); // The slot is free again but its bytes stay until the next Add.
        return true;
    }

    private static bool Overlaps(Slot slot, int first, int end)
    {
        for (int b = first; b < end; b++)
        {
            if ((slot.Have[b >> 6] & (1UL << (b & 63))) != 0)
            {
                return true;
            }
        }
        return false;
    }

    private static bool All(Slot slot, int first, int end)
    {
        for (int b = first; b < end; b++)
        {
            if ((slot.Have[b >> 6] & (1UL << (b & 63))) == 0)
            {
                return false;
            }
        }
        return true;
    }

    private static int HighestBlockEnd(Slot slot)
    {
        for (int w = slot.Have.Length - 1; w >= 0; w--)
        {
            if (slot.Have[w] != 0)
            {
                return ((w * 64) + 64 - System.Numerics.BitOperations.LeadingZeroCount(slot.Have[w])) * 8 - 7;
            }
        }
        return 0;
    }

    private Slot? Find(FragmentKey key, long now)
    {
        Slot? free = null;
        Slot? oldest = null;
        for (int i = 0; i < _slots.Length; i++)
        {
            Slot? s = _slots[i];
            if (s is null)
            {
                if (free is null)
                {
                    free = _slots[i] = new Slot(headerRoom, maxPayload);
                }
                continue;
            }
            if (s.InUse && now >= s.Expires)
            {
                Drop(s); // the reassembly timer ran out
            }
            if (!s.InUse)
            {
                free ??= s;
                continue;
            }
            if (s.Key == key)
            {
                return s;
            }
            if (oldest is null || s.Expires < oldest.Expires)
            {
                oldest = s;
            }
        }
        Slot slot = free ?? oldest!;
        if (slot.InUse)
        {
            Drop(slot);
        }
        slot.InUse = true;
        slot.Key = key;
        slot.Expires = now + TimeoutMs;
        return slot;
    }

    private void Drop(Slot slot)
    {
        Dropped++;
        slot.Reset();
    }
}

/// <summary>IPv4 fragment reassembly (RFC 791 §3.2) on <see cref="Reassembly"/>: keyed with the protocol, overlaps accepted.</summary>
internal sealed class Ipv4Reassembly
{
    public const long TimeoutMs = Reassembly.TimeoutMs;
    // The whole IPv4 datagram, header included, is at most 65,535 bytes.
    private readonly Reassembly _r = new(Ipv4Packet.MinHeaderLength, 65535 - Ipv4Packet.MinHeaderLength, strictOverlaps: false);

    public long Dropped => _r.Dropped;

    /// <summary>
    /// Adds one fragment. When it completes its datagram, returns true with <paramref name="datagram"/> the whole IPv4
    /// packet (a 20-byte header without options, then the payload), valid until the next call.
    /// </summary>
    public bool Add(in Ipv4Packet fragment, long now, out ReadOnlySpan<byte> datagram)
    {
        datagram = default;
        var key = new FragmentKey(fragment.Source, fragment.Destination, fragment.Identification, fragment.Protocol);
        if (!_r.Add(key, fragment.FragmentOffset, fragment.MoreFragments, fragment.Payload, fragment.Ttl, fragment.Protocol, now, out Span<byte> p, out byte ttl, out _))
        {
            return false;
        }
        Ipv4Packet.Write(p, p.Length, (ushort)key.Id, ttl, key.Protocol, (uint)key.Source, (uint)key.Destination);
        datagram = p;
        return true;
    }
}

/// <summary>
/// IPv6 fragment reassembly (RFC 8200 §4.5) on <see cref="Reassembly"/>: keyed by source, destination and
/// identification; overlaps drop the datagram (RFC 5722). The reassembled packet is the fixed header (payload length,
/// and the Next Header the first fragment's Fragment header named) then the fragmentable part: extension headers that
/// came before the Fragment header are left out, as nothing here acts on them.
/// </summary>
internal sealed class Ipv6Reassembly
{
    // The Payload Length field's 65,535 bytes hold the fragmentable part.
    private readonly Reassembly _r = new(Ipv6Packet.HeaderLength, 65535, strictOverlaps: true);

    public long Dropped => _r.Dropped;

    /// <summary>
    /// Adds one fragment of <paramref name="ip"/>, whose Fragment header <paramref name="fragment"/> the extension chain
    /// found. When it completes its packet, true with <paramref name="packet"/> the whole IPv6 packet, valid until the next call.
    /// </summary>
    public bool Add(in Ipv6Packet ip, Ipv6Fragment fragment, long now, out ReadOnlySpan<byte> packet)
    {
        packet = default;
        ReadOnlySpan<byte> header = ip.Payload.Slice(fragment.HeaderOffset);
        ReadOnlySpan<byte> data = header.Slice(8);
        var key = new FragmentKey(ip.Source, ip.Destination, fragment.Identification, 0);
        if (!_r.Add(key, fragment.Offset, fragment.MoreFragments, data, ip.HopLimit, header[0], now, out Span<byte> p, out byte hop, out byte next))
        {
            return false;
        }
        Ipv6Packet.Write(p, p.Length - Ipv6Packet.HeaderLength, next, hop, key.Source, key.Destination);
        packet = p;
        return true;
    }
}
