using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// IPv4 fragment reassembly (RFC 791 §3.2, with RFC 815's idea of tracking what is still missing, here as a bitmap of
/// 8-byte blocks). A datagram is identified by (source, destination, protocol, identification). Bounded: at most
/// <see cref="MaxDatagrams"/> datagrams in progress (the oldest is dropped for a new one), 65,535 bytes each, buffers
/// allocated once per slot and reused; an incomplete datagram is dropped <see cref="TimeoutMs"/> after its first
/// fragment (RFC 791 suggests a 15 s initial timer; Linux uses 30 s). Overlapping fragments are accepted, later
/// bytes winning, as RFC 791's procedure does. Pure: time is passed in.
/// </summary>
internal sealed class Ipv4Reassembly
{
    public const int MaxDatagrams = 16;
    public const long TimeoutMs = 30_000;
    private const int MaxPayload = 65535 - Ipv4Packet.MinHeaderLength;
    private const int Blocks = (MaxPayload + 7) / 8;

    private readonly Slot[] _slots = new Slot[MaxDatagrams];

    /// <summary>Datagrams given up: timed out, evicted for a newer one, or inconsistent.</summary>
    public long Dropped { get; private set; }

    private sealed class Slot
    {
        public readonly byte[] Packet = new byte[Ipv4Packet.MinHeaderLength + MaxPayload];
        public readonly ulong[] Have = new ulong[(Blocks + 63) / 64];
        public uint Source, Destination;
        public ushort Id;
        public byte Protocol, Ttl;
        public bool InUse, HaveFirst;
        public int Total = -1; // payload length, known once the last fragment (MF=0) arrived
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
    /// Adds one fragment. When it completes its datagram, returns true with <paramref name="datagram"/> the whole IPv4
    /// packet (a 20-byte header without options, then the payload), valid until the next call.
    /// </summary>
    public bool Add(in Ipv4Packet fragment, long now, out ReadOnlySpan<byte> datagram)
    {
        datagram = default;
        ReadOnlySpan<byte> data = fragment.Payload;
        int offset = fragment.FragmentOffset;
        bool more = fragment.MoreFragments;
        // RFC 791: every fragment but the last carries a multiple of 8 bytes; nothing may end past 65,535.
        if ((more && (data.Length == 0 || (data.Length & 7) != 0)) || offset + data.Length > MaxPayload)
        {
            Dropped++;
            return false;
        }
        Slot? slot = Find(fragment, now);
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
        data.CopyTo(slot.Packet.AsSpan(Ipv4Packet.MinHeaderLength + offset));
        for (int b = offset / 8, end = (offset + data.Length + 7) / 8; b < end; b++)
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
            slot.Ttl = fragment.Ttl;
        }
        if (slot.Total < 0 || !slot.HaveFirst || slot.BlocksHave != (slot.Total + 7) / 8)
        {
            return false;
        }
        int length = Ipv4Packet.MinHeaderLength + slot.Total;
        Span<byte> p = slot.Packet.AsSpan(0, length);
        Ipv4Packet.Write(p, length, slot.Id, slot.Ttl, slot.Protocol, slot.Source, slot.Destination);
        slot.Reset();
        datagram = p; // The slot is free again but its bytes stay until the next Add.
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

    private Slot? Find(in Ipv4Packet f, long now)
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
                    free = _slots[i] = new Slot();
                }
                continue;
            }
            if (s.InUse && now >= s.Expires)
            {
                Drop(s); // RFC 791: the reassembly timer ran out.
            }
            if (!s.InUse)
            {
                free ??= s;
                continue;
            }
            if (s.Source == f.Source && s.Destination == f.Destination && s.Id == f.Identification && s.Protocol == f.Protocol)
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
        slot.Source = f.Source;
        slot.Destination = f.Destination;
        slot.Id = f.Identification;
        slot.Protocol = f.Protocol;
        slot.Expires = now + TimeoutMs;
        return slot;
    }

    private void Drop(Slot slot)
    {
        Dropped++;
        slot.Reset();
    }
}
