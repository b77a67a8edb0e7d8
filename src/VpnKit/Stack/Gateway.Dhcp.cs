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
/// The DHCP server (RFC 2131): one lease per client MAC, stable for the life of the gateway, so a guest that
/// reconnects gets the same address. Leases are effectively infinite, as in vpnkit, so renewals never glitch.
/// </summary>
internal sealed partial class Gateway
{
    private readonly Dictionary<MacAddress, uint> _leases = [];
    private readonly Dictionary<uint, MacAddress> _leasedIps = [];
    private readonly byte[] _dhcpReply;
    private byte[]? _searchOption;

    private void NoteAddressInUse(uint ip, MacAddress mac)
    {
        if (!_leasedIps.ContainsKey(ip) && !_leases.ContainsKey(mac) && ip >= _o.FirstGuestIp && ip <= _o.LastGuestIp)
        {
            _leases[mac] = ip;
            _leasedIps[ip] = mac;
        }
    }

    /// <summary>The address this MAC has, allocating the lowest free one on first sight; 0 when the pool is empty.</summary>
    public uint LeaseFor(MacAddress mac)
    {
        if (_leases.TryGetValue(mac, out uint ip))
        {
            return ip;
        }
        for (uint a = _o.FirstGuestIp; a <= _o.LastGuestIp; a++)
        {
            if (!_leasedIps.ContainsKey(a))
            {
                _leases[mac] = a;
                _leasedIps[a] = mac;
                return a;
            }
        }
        return 0;
    }

    /// <summary>
    /// Pins this MAC's lease to <paramref name="ip"/> before the guest asks (VMN3T Preferred_ipv4, reference/vpnkit.md
    /// §2.2.1), with vpnkit's rules: a MAC that already has an address keeps it and may only ask for that one; a new
    /// one may take any free address in the guest pool. Nothing changes unless the result is
    /// <see cref="LeaseReservation.Reserved"/>.
    /// </summary>
    public LeaseReservation ReserveLease(MacAddress mac, uint ip)
    {
        if (_leases.TryGetValue(mac, out uint current))
        {
            return current == ip ? LeaseReservation.Reserved : LeaseReservation.MacHasOtherAddress;
        }
        if (ip < _o.FirstGuestIp || ip > _o.LastGuestIp || !_o.InSubnet(ip))
        {
            return LeaseReservation.OutOfRange;
        }
        if (_leasedIps.ContainsKey(ip))
        {
            return LeaseReservation.InUse;
        }
        _leases[mac] = ip;
        _leasedIps[ip] = mac;
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
        uint lease = LeaseFor(mac);
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
                    break;
                }
            case DhcpOption.Inform:
                reply = DhcpOption.Ack;
                lease = 0;
                break;
            default:
                return; // Release and decline change nothing: the address stays reserved for this MAC.
        }
        var w = new DhcpWriter(_dhcpReply, m.TransactionId, m.Flags, reply == DhcpOption.Nak ? 0 : lease, _o.GatewayIp, mac);
        w.Option(DhcpOption.MessageType, reply);
        w.OptionUInt32(DhcpOption.ServerId, _o.GatewayIp);
        if (reply != DhcpOption.Nak)
        {
            if (type != DhcpOption.Inform)
            {
                w.OptionUInt32(DhcpOption.LeaseTime, int.MaxValue);
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
            foreach (string label in labels)
            {
                bytes.Add((byte)label.Length);
                bytes.AddRange(Encoding.ASCII.GetBytes(label));
            }
            bytes.Add(0);
        }
        return [.. bytes];
    }
}
