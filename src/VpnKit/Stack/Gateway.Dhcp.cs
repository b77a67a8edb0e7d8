using System.Text;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>What <see cref="Gateway.ReserveLease"/> did with a requested address.</summary>
internal enum LeaseReservation
{
    /// <summary>The MAC now holds the address (or already did).</summary>
    Reserved,
    /// <summary>The address is outside the guest pool.</summary>
    OutOfRange,
    /// <summary>Another MAC holds the address.</summary>
    InUse,
    /// <summary>This MAC already holds a different address (a reconnecting VM asking for a new one).</summary>
    MacHasOtherAddress,
}

/// <summary>
/// The DHCP server (RFC 2131): one lease per client MAC. A lease lasts <see cref="GatewayOptions.DhcpLeaseSeconds"/>
/// (the lease time option, 51, says the same) and the guest renews it at half time (RFC 2131 §4.4.5), which moves the
/// expiry on. An expired lease stays with its MAC, so a guest that reconnects later gets the same address, until the
/// pool runs short: only then is the longest-expired lease reclaimed for a new client. One link (one TAP, one QEMU or
/// hyperkit connection) may hold at most <see cref="GatewayOptions.MaxLeasesPerLink"/> live leases, so a guest that
/// invents client MACs cannot take the whole pool from the others: beyond the cap a DISCOVER gets no offer and a
/// REQUEST a DHCPNAK, both counted (<see cref="GatewayCounters.DhcpRefused"/>).
/// </summary>
internal sealed partial class Gateway
{
    /// <summary>Leases granted by <see cref="ReserveLease"/> (VMN3T's preferred address): not charged to a link.</summary>
    private const int NoLink = -1;

    private sealed class Lease(uint ip, int link, long expires)
    {
        public readonly uint Ip = ip;
        public int Link = link;
        public long Expires = expires;
    }

    private readonly Dictionary<MacAddress, Lease> _leases = [];
    private readonly Dictionary<uint, MacAddress> _leasedIps = [];
    private readonly Dictionary<int, int> _leasesPerLink = [];
    private readonly byte[] _dhcpReply;
    private byte[]? _searchOption;

    private long LeaseEnd => _now + (_o.DhcpLeaseSeconds * 1000L);

    private void NoteAddressInUse(uint ip, MacAddress mac)
    {
        if (_leases.TryGetValue(mac, out Lease? held))
        {
            if (held.Ip == ip)
            {
                held.Expires = Math.Max(held.Expires, LeaseEnd); // in use: not a candidate for reclaiming
            }
            return;
        }
        if (!_leasedIps.ContainsKey(ip) && ip >= _o.FirstGuestIp && ip <= _o.LastGuestIp)
        {
            // A static address seen in traffic: recorded so DHCP never hands it out, but charged to no link (it
            // cannot be taken from anyone: it was free).
            Add(mac, new Lease(ip, NoLink, LeaseEnd));
        }
    }

    private void Add(MacAddress mac, Lease lease)
    {
        _leases[mac] = lease;
        _leasedIps[lease.Ip] = mac;
        if (lease.Link != NoLink)
        {
            _leasesPerLink[lease.Link] = _leasesPerLink.GetValueOrDefault(lease.Link) + 1;
        }
    }

    private void Drop(MacAddress mac, Lease lease)
    {
        _leases.Remove(mac);
        _leasedIps.Remove(lease.Ip);
        if (lease.Link != NoLink && _leasesPerLink.TryGetValue(lease.Link, out int n))
        {
            if (n <= 1)
            {
                _leasesPerLink.Remove(lease.Link);
            }
            else
            {
                _leasesPerLink[lease.Link] = n - 1;
            }
        }
    }

    /// <summary>The address this MAC has, allocating the lowest free one on first sight; 0 when the pool is empty.</summary>
    public uint LeaseFor(MacAddress mac) => LeaseFor(mac, 0);

    /// <summary>
    /// The address this MAC has, or a new lease charged to <paramref name="link"/>: the lowest never-leased address,
    /// else the longest-expired lease reclaimed. 0 when the link is at its cap or the pool is empty.
    /// </summary>
    private uint LeaseFor(MacAddress mac, int link)
    {
        if (_leases.TryGetValue(mac, out Lease? held))
        {
            return held.Ip;
        }
        if (_leasesPerLink.GetValueOrDefault(link) >= _o.MaxLeasesPerLink && !ReclaimExpired(link))
        {
            Counters.DhcpRefused++;
            return 0;
        }
        // The pool is short when nothing is free: then the lease that expired longest ago is reclaimed (its guest has
        // not renewed it, RFC 2131 §4.4.5).
        uint free = LowestFree();
        if (free == 0 && ReclaimExpired(null))
        {
            free = LowestFree();
        }
        if (free == 0)
        {
            Counters.DhcpRefused++;
            return 0;
        }
        Add(mac, new Lease(free, link, LeaseEnd));
        return free;
    }

    private uint LowestFree()
    {
        for (uint a = _o.FirstGuestIp; a <= _o.LastGuestIp; a++)
        {
            if (!_leasedIps.ContainsKey(a))
            {
                return a;
            }
        }
        return 0;
    }

    /// <summary>Frees the longest-expired lease (of <paramref name="link"/> only, when given); false if none has expired.</summary>
    private bool ReclaimExpired(int? link)
    {
        MacAddress oldestMac = default;
        Lease? oldest = null;
        foreach (KeyValuePair<MacAddress, Lease> kv in _leases)
        {
            Lease l = kv.Value;
            if (l.Expires <= _now && (link is null || l.Link == link) && (oldest is null || l.Expires < oldest.Expires))
            {
                oldest = l;
                oldestMac = kv.Key;
            }
        }
        if (oldest is null)
        {
            return false;
        }
        Drop(oldestMac, oldest);
        _arp.Remove(oldest.Ip);
        Counters.DhcpReclaimed++;
        return true;
    }

    /// <summary>
    /// Pins this MAC's lease to <paramref name="ip"/> before the guest asks (VMN3T Preferred_ipv4, reference/vpnkit.md
    /// §2.2.1), with vpnkit's rules: a MAC that already has an address keeps it and may only ask for that one; a new
    /// one may take any free address in the guest pool. Nothing changes unless the result is
    /// <see cref="LeaseReservation.Reserved"/>.
    /// </summary>
    public LeaseReservation ReserveLease(MacAddress mac, uint ip)
    {
        if (_leases.TryGetValue(mac, out Lease? current))
        {
            return current.Ip == ip ? LeaseReservation.Reserved : LeaseReservation.MacHasOtherAddress;
        }
        if (ip < _o.FirstGuestIp || ip > _o.LastGuestIp || !_o.InSubnet(ip))
        {
            return LeaseReservation.OutOfRange;
        }
        if (_leasedIps.ContainsKey(ip))
        {
            return LeaseReservation.InUse;
        }
        Add(mac, new Lease(ip, NoLink, LeaseEnd));
        return LeaseReservation.Reserved;
    }

    private void HandleDhcp(MacAddress srcMac, ReadOnlySpan<byte> payload)
    {
        if (!DhcpMessage.TryParse(payload, out DhcpMessage m) || m.Op != 1 || m.HardwareType != 1 || m.HardwareLength != 6)
        {
            Counters.Malformed++;
            return;
        }
        MacAddress mac = m.ClientMac;
        byte type = m.MessageType;
        byte reply;
        uint lease = type is DhcpOption.Discover or DhcpOption.Request ? LeaseFor(mac, _link) : 0;
        switch (type)
        {
            case DhcpOption.Discover:
                if (lease == 0)
                {
                    return;
                }
                reply = DhcpOption.Offer;
                break;
            case DhcpOption.Request:
                {
                    // RFC 2131 §4.3.2: a request for another server's offer is silently ignored; a request for an
                    // address other than this client's lease is NAKed.
                    uint server = m.ServerId;
                    if (server != 0 && server != _o.GatewayIp)
                    {
                        return;
                    }
                    uint wanted = m.RequestedIp != 0 ? m.RequestedIp : m.ClientIp;
                    reply = lease != 0 && (wanted == 0 || wanted == lease) ? DhcpOption.Ack : DhcpOption.Nak;
                    if (reply == DhcpOption.Ack)
                    {
                        _leases[mac].Expires = LeaseEnd; // granted or renewed (RFC 2131 §4.3.2)
                    }
                    break;
                }
            case DhcpOption.Inform:
                reply = DhcpOption.Ack;
                lease = 0;
                break;
            case DhcpOption.Release:
                // RFC 2131 §4.3.4: the address is free again. It stays with this MAC (a guest that comes back gets it)
                // but counts as expired, so it is the first reclaimed when the pool runs short.
                if (_leases.TryGetValue(mac, out Lease? released))
                {
                    released.Expires = Math.Min(released.Expires, _now);
                }
                return;
            default:
                return; // Decline changes nothing: the address stays reserved for this MAC.
        }
        var w = new DhcpWriter(_dhcpReply, m.TransactionId, m.Flags, reply == DhcpOption.Nak ? 0 : lease, _o.GatewayIp, mac);
        w.Option(DhcpOption.MessageType, reply);
        w.OptionUInt32(DhcpOption.ServerId, _o.GatewayIp);
        if (reply != DhcpOption.Nak)
        {
            if (type != DhcpOption.Inform)
            {
                w.OptionUInt32(DhcpOption.LeaseTime, (uint)_o.DhcpLeaseSeconds);
            }
            w.OptionUInt32(DhcpOption.SubnetMask, _o.SubnetMask);
            w.OptionUInt32(DhcpOption.Router, _o.GatewayIp);
            w.OptionUInt32(DhcpOption.DnsServers, _o.GatewayIp);
            w.OptionUInt32(DhcpOption.BroadcastAddress, _o.Broadcast);
            w.OptionUInt16(DhcpOption.InterfaceMtu, (ushort)_o.Mtu);
            if (_o.DomainName.Length is > 0 and < 200)
            {
                w.Option(DhcpOption.DomainName, Encoding.ASCII.GetBytes(_o.DomainName));
            }
            // Option 119 carries the explicit search list, or else the option-15 domain, so that clients that only
            // read the search list (systemd-networkd, dhclient's "search") still qualify short names the same way.
            byte[] search = _searchOption ??= EncodeSearchList(_o.SearchDomains.Count > 0 ? _o.SearchDomains : [_o.DomainName]);
            if (search.Length is > 0 and <= 255)
            {
                w.Option(DhcpOption.DomainSearch, search);
            }
        }
        int len = w.Finish();
        Counters.DhcpReplies++;
        // RFC 2131 §4.1: the client has no address yet, so answer by broadcast (busybox udhcpc and dhclient accept it).
        SendUdpTo(MacAddress.Broadcast, _o.GatewayIp, 67, uint.MaxValue, 68, _dhcpReply.AsSpan(0, len));
    }

    /// <summary>
    /// Option 119 (RFC 3397 §2): each name in DNS wire format (RFC 1035 §3.1: length-prefixed labels, a zero byte),
    /// concatenated. Compression pointers are allowed but not required, so none are used. A name that cannot be
    /// encoded (empty, a label over 63 bytes, over 255 bytes in all, not ASCII) is left out rather than altered.
    /// </summary>
    internal static byte[] EncodeSearchList(IReadOnlyList<string> domains)
    {
        var bytes = new List<byte>();
        Span<byte> name = stackalloc byte[256]; // a name is at most 255 bytes (RFC 1035 §3.1), checked below
        foreach (string d in domains)
        {
            string[] labels = d.Trim('.').Split('.');
            int nameLength = 1;
            bool valid = labels.Length > 0;
            foreach (string label in labels)
            {
                valid &= label.Length is > 0 and <= 63 && Ascii.IsValid(label);
                nameLength += 1 + label.Length;
            }
            if (!valid || nameLength > 255)
            {
                continue;
            }
            bytes.AddRange(name[..DnsName.Write(name, d)]);
        }
        return [.. bytes];
    }
}
