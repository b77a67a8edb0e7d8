using System.Text;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

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
            byte[] search = _searchOption ??= EncodeSearchList(_o.SearchDomains);
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

    /// <summary>Option 119 (RFC 3397): the names in DNS wire format, uncompressed.</summary>
    private static byte[] EncodeSearchList(IReadOnlyList<string> domains)
    {
        var bytes = new List<byte>();
        foreach (string d in domains)
        {
            foreach (string label in d.Trim('.').Split('.', StringSplitOptions.RemoveEmptyEntries))
            {
                if (label.Length > 63)
                {
                    continue;
                }
                bytes.Add((byte)label.Length);
                bytes.AddRange(Encoding.ASCII.GetBytes(label));
            }
            bytes.Add(0);
        }
        return [.. bytes];
    }
}
