using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Nat;

/// <summary>
/// Maps forwarded echo requests to the guest's own identifier and sequence. Every guest echo gets a fresh 16-bit
/// key that travels as the outgoing <em>sequence</em> number: an ICMP datagram socket (ping_group_range) owns the
/// identifier (the kernel writes its port there and routes replies by it, net/ipv4/ping.c), so the sequence is the one
/// field we control in both socket modes. RFC 792: an echo reply returns identifier, sequence and data unchanged.
/// Bounded: a ring of <see cref="Capacity"/> entries; an echo whose reply never comes is overwritten a ring later.
/// Pure (no sockets, no clock), so it is unit-tested directly.
/// </summary>
internal sealed class IcmpEchoMap
{
    public const int Capacity = 4096;

    private readonly Entry[] _entries = new Entry[Capacity];
    private readonly ushort[] _keys = new ushort[Capacity];
    private int _next;

    /// <summary>One outstanding echo: who asked, the address it believes it pinged, where it really went, its id/seq.</summary>
    public readonly record struct Entry(IpAddr Guest, IpAddr GuestVisibleDestination, IpAddr HostDestination, ushort Id, ushort Sequence)
    {
        public bool InUse => Guest.Value != 0;
    }

    /// <summary>Records an echo and returns the sequence number to send it with.</summary>
    public ushort Add(IpAddr guest, IpAddr guestVisibleDestination, IpAddr hostDestination, ushort id, ushort sequence)
    {
        // The key is 16 bits wide (it is the wire sequence); the slot is its low bits, and the entry keeps the key so a
        // reply for an overwritten echo (same slot, older key) is not delivered to the newer one.
        ushort key = (ushort)_next++;
        _entries[key & (Capacity - 1)] = new Entry(guest, guestVisibleDestination, hostDestination, id, sequence);
        _keys[key & (Capacity - 1)] = key;
        return key;
    }

    /// <summary>
    /// Finds the echo a reply with <paramref name="sequence"/> from <paramref name="from"/> answers and forgets it
    /// (a duplicate reply is dropped, as a host that already saw one would). False for stray or spoofed replies.
    /// </summary>
    public bool TryTake(ushort sequence, IpAddr from, out Entry entry)
    {
        int slot = sequence & (Capacity - 1);
        entry = _entries[slot];
        if (!entry.InUse || _keys[slot] != sequence || entry.HostDestination != from)
        {
            entry = default;
            return false;
        }
        _entries[slot] = default;
        return true;
    }
}
