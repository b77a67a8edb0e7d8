using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// The in-prefix IPv6 addresses each guest MAC is known to hold, so the gateway can open a connection to a guest's
/// IPv6 address (a port published on the host's [::1]). A guest configures its own addresses (SLAAC, RFC 4862) and the
/// gateway never assigns them, so they are learned from what the guest says: the target of its Duplicate Address
/// Detection (an NS from ::, RFC 4862 §5.4.2), the target of its Neighbor Advertisements (RFC 4861 §7.2.6), and the
/// source of its packets. The caller has already checked that each address is in the prefix, unicast and not the
/// gateway's own; a spoofed source outside the prefix never reaches this table.
/// Bounded: <see cref="PerGuest"/> addresses per MAC and <see cref="MaxGuests"/> MACs, the least recently seen going
/// first. Pure: time is passed in.
/// </summary>
internal sealed class GuestAddresses6(UInt128 prefix)
{
    /// <summary>
    /// A SLAAC guest holds one stable address and, with privacy extensions (RFC 8981 §3.4), a temporary one per
    /// regeneration interval (a day by default) plus the deprecated ones still in use: a few cover it.
    /// </summary>
    internal const int PerGuest = 4;

    /// <summary>Guest MACs remembered at once (as many as the neighbour table has addresses).</summary>
    internal const int MaxGuests = 256;

    /// <summary>How stale a "last seen" may get before a packet refreshes it (not every packet writes the table).</summary>
    private const long RefreshMs = 1000;

    private sealed class Guest
    {
        public readonly UInt128[] Addresses = new UInt128[PerGuest];
        public readonly long[] Seen = new long[PerGuest];
        public int Count;
        public long LastSeen;
    }

    private readonly Dictionary<MacAddress, Guest> _byMac = [];
    private readonly UInt128 _prefix = prefix & ~(UInt128)ulong.MaxValue;

    /// <summary>MACs with at least one address.</summary>
    public int GuestCount => _byMac.Count;

    /// <summary>Remembers that <paramref name="mac"/> holds <paramref name="address"/> (announced or used now).</summary>
    public void Note(MacAddress mac, UInt128 address, long now)
    {
        // The subnet-router anycast address (interface identifier 0, RFC 4291 §2.6.1) is no guest's.
        if ((address >> 64) != (_prefix >> 64) || (ulong)address == 0 || mac.IsMulticast || mac == MacAddress.Zero)
        {
            return;
        }
        if (_byMac.TryGetValue(mac, out Guest? g))
        {
            int i = Array.IndexOf(g.Addresses, address, 0, g.Count);
            if (i >= 0)
            {
                if (now - g.Seen[i] >= RefreshMs || now < g.Seen[i])
                {
                    g.Seen[i] = now;
                    g.LastSeen = now;
                }
                return;
            }
        }
        else
        {
            if (_byMac.Count >= MaxGuests)
            {
                EvictOldestGuest();
            }
            g = new Guest();
            _byMac[mac] = g;
        }
        // A new pair: an address has one holder (DAD, RFC 4862 §5.4, makes it so), so it leaves any MAC that had it
        // (a guest recreated with a new MAC keeps its address).
        ForgetElsewhere(mac, address);
        int slot = g.Count < PerGuest ? g.Count++ : OldestSlot(mac, g);
        g.Addresses[slot] = address;
        g.Seen[slot] = now;
        g.LastSeen = now;
    }

    /// <summary>
    /// The address to open connections to on <paramref name="mac"/>: its modified EUI-64 address in the prefix if it
    /// holds it (RFC 4862 §5.5.3 with RFC 4291 App. A: derived from the MAC, so stable, and never a temporary address,
    /// whose identifiers are random, RFC 8981 §3.3.1), else the one it most recently used or announced. A guest that
    /// uses stable-privacy identifiers (RFC 7217) and temporaries cannot be told apart from outside; the most recent
    /// may then be a temporary address, still valid while the guest uses it.
    /// </summary>
    public bool TryGetPreferred(MacAddress mac, out UInt128 address)
    {
        address = 0;
        if (!_byMac.TryGetValue(mac, out Guest? g) || g.Count == 0)
        {
            return false;
        }
        UInt128 eui64 = Eui64(mac);
        long seen = long.MinValue;
        for (int i = 0; i < g.Count; i++)
        {
            if (g.Addresses[i] == eui64)
            {
                address = eui64;
                return true;
            }
            if (g.Seen[i] > seen)
            {
                seen = g.Seen[i];
                address = g.Addresses[i];
            }
        }
        return true;
    }

    /// <summary>The MAC that holds <paramref name="address"/>, if any.</summary>
    public bool TryGetMac(UInt128 address, out MacAddress mac)
    {
        foreach (KeyValuePair<MacAddress, Guest> kv in _byMac)
        {
            if (Array.IndexOf(kv.Value.Addresses, address, 0, kv.Value.Count) >= 0)
            {
                mac = kv.Key;
                return true;
            }
        }
        mac = default;
        return false;
    }

    /// <summary>The one MAC with addresses, when exactly one has any (the usual single guest).</summary>
    public bool TryGetOnlyGuest(out MacAddress mac)
    {
        mac = default;
        if (_byMac.Count != 1)
        {
            return false;
        }
        foreach (MacAddress m in _byMac.Keys)
        {
            mac = m;
        }
        return true;
    }

    /// <summary>The addresses known for <paramref name="mac"/> (tests, diagnostics).</summary>
    public UInt128[] AddressesOf(MacAddress mac) => _byMac.TryGetValue(mac, out Guest? g) ? g.Addresses.AsSpan(0, g.Count).ToArray() : [];

    private UInt128 Eui64(MacAddress mac) => _prefix | (ulong)Ip6.LinkLocalFromMac(mac);

    /// <summary>The least recently seen slot; the MAC's own EUI-64 address is kept while another can go.</summary>
    private int OldestSlot(MacAddress mac, Guest g)
    {
        UInt128 eui64 = Eui64(mac);
        int oldest = -1;
        for (int i = 0; i < g.Count; i++)
        {
            if (g.Addresses[i] != eui64 && (oldest < 0 || g.Seen[i] < g.Seen[oldest]))
            {
                oldest = i;
            }
        }
        return oldest;
    }

    private void ForgetElsewhere(MacAddress mac, UInt128 address)
    {
        foreach (KeyValuePair<MacAddress, Guest> kv in _byMac)
        {
            Guest other = kv.Value;
            int i = kv.Key == mac ? -1 : Array.IndexOf(other.Addresses, address, 0, other.Count);
            if (i < 0)
            {
                continue;
            }
            other.Count--;
            other.Addresses[i] = other.Addresses[other.Count];
            other.Seen[i] = other.Seen[other.Count];
            if (other.Count == 0)
            {
                _byMac.Remove(kv.Key); // allowed while enumerating (.NET Core 3.0+), and the loop ends next
            }
            return;
        }
    }

    private void EvictOldestGuest()
    {
        MacAddress oldest = default;
        long seen = long.MaxValue;
        foreach (KeyValuePair<MacAddress, Guest> kv in _byMac)
        {
            if (kv.Value.LastSeen < seen)
            {
                seen = kv.Value.LastSeen;
                oldest = kv.Key;
            }
        }
        _byMac.Remove(oldest);
    }
}
