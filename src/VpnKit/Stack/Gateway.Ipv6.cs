using System.Buffers.Binary;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// IPv6 on the guest link, first slice (issue 18, items 2 and 4): Neighbor Discovery as a router (RFC 4861: RS → RA
/// with the prefix for SLAAC, the MTU, RDNSS and DNSSL of RFC 8106; NS → NA for the gateway's and the host alias's
/// addresses; unsolicited RAs when a guest appears), ICMPv6 echo for those addresses, stateless DHCPv6 (RFC 8415
/// §6.1), DNS queries to the gateway's address, and NAT66 (item 3): TCP, UDP and echo to the host alias (the host's
/// ::1) and to destinations off the link go to the NAT as IPv4's do (<see cref="Carried6"/>). Everything else is
/// refused at once (ICMPv6 unreachable, RST for TCP) so guests fall back to IPv4 instead of waiting. Items 4 and 5: TCP
/// to the gateway's port 53 goes to the NAT (DNS over TCP), and each guest's in-prefix addresses are learned
/// (<see cref="GuestAddresses6"/>) so that ports published on the host's [::1] open to them (<see cref="PublishTarget"/>).
/// Trust (docs/security.md, "IPv6 on the guest link"): a guest may use only link-local and in-prefix sources, never
/// the gateway's; its RAs and Redirects are dropped, so it cannot become a router for the others; every table is
/// bounded and every malformed packet is counted, never thrown.
/// </summary>
internal sealed partial class Gateway
{
    /// <summary>Guest addresses remembered at once; the least recently seen goes for a new one (a /64 has 2^64).</summary>
    internal const int MaxNeighbours = 256;
    /// <summary>RFC 4861 §10: MAX_INITIAL_RTR_ADVERTISEMENTS, MAX_INITIAL_RTR_ADVERT_INTERVAL, MIN_DELAY_BETWEEN_RAS.</summary>
    private const int MaxInitialRas = 3;
    private const long InitialRaIntervalMs = 16_000;
    private const long MinDelayBetweenRasMs = 3_000;
    /// <summary>RFC 4861 §6.2.1 MaxRtrAdvInterval default; router lifetime is three times it (AdvDefaultLifetime).</summary>
    private const long MaxRtrAdvIntervalMs = 600_000;
    private const ushort RouterLifetime = 1800;
    /// <summary>RFC 4861 §6.2.1 AdvValidLifetime and AdvPreferredLifetime defaults (30 and 7 days).</summary>
    private const uint ValidLifetime = 2_592_000;
    private const uint PreferredLifetime = 604_800;
    /// <summary>RFC 8106 §5.1: at least MaxRtrAdvInterval; three times it, as recommended.</summary>
    private const uint DnsLifetime = 1800;
    /// <summary>ICMPv6 errors (and RSTs) per second and burst (RFC 4443 §2.4(f) asks for a limit, not a number).</summary>
    private const int ErrorsPerSecond = 100;
    private const int ErrorBurst = 20;
    /// <summary>RFC 4443 §3.1: destination unreachable codes.</summary>
    private const byte AdministrativelyProhibited = 1;
    private const byte PortUnreachable = 4;
    private const int Ip6At = EthernetFrame.HeaderLength + Ipv6Packet.HeaderLength;

    private readonly record struct Neighbour(MacAddress Mac, long Seen);

    private readonly Dictionary<UInt128, Neighbour> _neighbours = [];
    private UInt128 _gw6;
    private UInt128 _ll6;
    private UInt128 _host6;
    private IReadOnlyList<string> _search6 = [];
    private int _searchWireLength;
    private long _raDue = long.MaxValue;
    private long _lastRa = long.MinValue / 2;
    private int _initialRas;
    private int _errorTokens = ErrorBurst;
    private long _errorRefilled;

    /// <summary>Where DNS queries to the gateway's IPv6 address go; null: they get a port unreachable.</summary>
    public IDnsQueries? Dns { get; set; }

    /// <summary>Where guest datagrams to the host alias go first: replies to UDP ports published on [::1]; null: none.</summary>
    public IUdp6Replies? PublishedUdp6 { get; set; }

    /// <summary>Guest IPv6 addresses whose MAC is known.</summary>
    public int NeighbourCount => _neighbours.Count;

    private void InitIpv6()
    {
        _gw6 = _o.GatewayIp6;
        _ll6 = _o.GatewayLinkLocal6;
        _host6 = _o.HostIp6;
        // The same list DHCPv4's option 119 carries: the search domains, else the domain name.
        var search = new List<string>();
        foreach (string d in _o.SearchDomains.Count > 0 ? _o.SearchDomains : [_o.DomainName])
        {
            if (EncodeSearchList([d]).Length > 0)
            {
                search.Add(d);
                _searchWireLength += DnsName.Length(d);
            }
        }
        _search6 = search;
    }

    private bool IsOurs6(UInt128 a) => a == _gw6 || a == _ll6 || a == _host6;

    /// <summary>Multicast groups the gateway listens to: all-nodes, all-routers, DHCPv6 servers, its solicited-node groups.</summary>
    private bool IsOurGroup6(UInt128 a) => a == Ip6.AllNodes || a == Ip6.AllRouters || a == Dhcpv6.AllServers
        || a == Ip6.SolicitedNode(_gw6) || a == Ip6.SolicitedNode(_ll6) || a == Ip6.SolicitedNode(_host6);

    private void HandleIpv6(MacAddress srcMac, ReadOnlySpan<byte> p)
    {
        if (!_o.Ipv6)
        {
            Counters.NotForUs++;
            return;
        }
        if (Ipv6Packet.TryParse(p, out Ipv6Packet ip) != Ipv6Error.None
            || Ipv6ExtensionChain.TryFindUpperLayer(ip.Payload, ip.NextHeader, out byte protocol, out int offset, out Ipv6Fragment? fragment) != Ipv6Error.None)
        {
            Counters.Ipv6Malformed++;
            return;
        }
        UInt128 src = ip.Source;
        UInt128 dst = ip.Destination;
        // RFC 4861 §6.1.1 and §7.1.1 allow the unspecified source for RS and DAD's NS only; otherwise a guest speaks
        // from its link-local or in-prefix addresses, never from a group or from the gateway's own.
        bool unspecified = Ip6.IsUnspecified(src);
        if (Ip6.IsMulticast(src) || IsOurs6(src) || (unspecified ? protocol != Ipv6ExtensionChain.Icmpv6 : !(Ip6.IsLinkLocal(src) || _o.InPrefix6(src))))
        {
            Counters.Ipv6Spoofed++;
            return;
        }
        if (fragment is Ipv6Fragment f)
        {
            // Reassembled (bounded, see Reassembly), then handled as one packet; as for IPv4 its transport checksum is
            // always verified (no offload across fragments).
            Counters.Ipv6Fragments++;
            if (!_reassembly6.Add(ip, f, _now, out ReadOnlySpan<byte> whole))
            {
                return;
            }
            Counters.Reassembled++;
            bool trusted = _trusted;
            _trusted = false;
            HandleIpv6(srcMac, whole);
            _trusted = trusted;
            return;
        }
        bool multicast = Ip6.IsMulticast(dst);
        if (multicast ? !(IsOurGroup6(dst) || IsGuestDad(unspecified, protocol, dst, ip.Payload.Slice(offset))) : !IsOurs6(dst) && (Ip6.IsLinkLocal(dst) || _o.InPrefix6(dst)))
        {
            Counters.NotForUs++; // MLD reports, mDNS, another guest's address: nothing for the gateway
            return;
        }
        if (!unspecified)
        {
            Learn6(src, srcMac);
            if (_o.InPrefix6(src))
            {
                _guest6.Note(srcMac, src, _now); // a guest's in-prefix address in use (publishing opens to it)
            }
        }
        if ((dst >> 32) == 0xFFFF)
        {
            // IPv4-mapped (RFC 4291 §2.5.5.2) is how a socket API names IPv4, never a destination on the wire; refused
            // before it could be taken for IPv4 (IpAddr holds IPv4 this way) or reach IPv4 through an IPv6 socket.
            SendUnreachable6(srcMac, ip, AdministrativelyProhibited);
            return;
        }
        ReadOnlySpan<byte> upper = ip.Payload.Slice(offset);
        switch (protocol)
        {
            case Ipv6ExtensionChain.Icmpv6:
                HandleIcmpv6(srcMac, ip, upper, multicast);
                break;
            case IpProtocol.Udp:
                HandleUdp6(srcMac, ip, upper, multicast);
                break;
            case IpProtocol.Tcp when !multicast:
                HandleTcp6(srcMac, ip, upper);
                break;
            default:
                if (!multicast && !IsOurs6(dst))
                {
                    SendUnreachable6(srcMac, ip, AdministrativelyProhibited);
                }
                break;
        }
    }

    /// <summary>
    /// A guest's Duplicate Address Detection (RFC 4862 §5.4.2: an NS from :: to the tentative address's solicited-node
    /// group): not for the gateway to answer, but it names an address the guest is taking (publishing opens to it).
    /// </summary>
    private static bool IsGuestDad(bool unspecified, byte protocol, UInt128 dst, ReadOnlySpan<byte> upper) =>
        unspecified && protocol == Ipv6ExtensionChain.Icmpv6 && upper.Length > 0 && upper[0] == Icmpv6Type.NeighborSolicitation
        && (dst & ~(UInt128)0xFF_FFFF) == Ip6.SolicitedNode(0);

    private bool Verify6(Ipv6Packet ip, ReadOnlySpan<byte> upper, byte protocol)
    {
        if (_trusted || Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(ip.Source, ip.Destination, protocol, upper.Length), upper)) == 0)
        {
            return true;
        }
        Counters.BadChecksum++;
        return false;
    }

    private void HandleIcmpv6(MacAddress srcMac, Ipv6Packet ip, ReadOnlySpan<byte> m, bool multicast)
    {
        if (!Icmpv6Message.TryParse(m, out Icmpv6Message icmp))
        {
            Counters.Ipv6Malformed++;
            return;
        }
        if (!Verify6(ip, m, Ipv6ExtensionChain.Icmpv6))
        {
            return;
        }
        bool unspecified = Ip6.IsUnspecified(ip.Source);
        switch (icmp.Type)
        {
            case Icmpv6Type.RouterAdvertisement or Icmpv6Type.Redirect:
                // A guest is never a router for the others (and the gateway learns no routes from guests).
                Counters.NdpFromGuestRouter++;
                return;
            case Icmpv6Type.RouterSolicitation:
                if (!Ndp.IsValid(m, ip.HopLimit) || (unspecified && Ndp.TryGetLinkLayerAddress(m, NdpOption.SourceLinkLayerAddress, out _)))
                {
                    Counters.NdpInvalid++;
                    return;
                }
                LearnFromOption(ip.Source, m, NdpOption.SourceLinkLayerAddress);
                if (unspecified)
                {
                    ScheduleRouterAdvertisement(_now); // RFC 4861 §6.2.6: to all nodes, rate-limited
                }
                else
                {
                    SendRouterAdvertisement(srcMac, ip.Source); // RFC 4861 §6.2.6: a unicast answer is allowed
                }
                return;
            case Icmpv6Type.NeighborSolicitation:
                HandleNeighborSolicitation(srcMac, ip, m, unspecified);
                return;
            case Icmpv6Type.NeighborAdvertisement:
                {
                    // RFC 4861 §7.1.2; a guest claiming one of the gateway's addresses is ignored and counted.
                    if (!Ndp.IsValid(m, ip.HopLimit) || unspecified || Ip6.IsMulticast(Ndp.Target(m)) || (multicast && (m[4] & 0x40) != 0))
                    {
                        Counters.NdpInvalid++;
                        return;
                    }
                    UInt128 target = Ndp.Target(m);
                    if (IsOurs6(target))
                    {
                        Counters.Ipv6Spoofed++;
                        return;
                    }
                    MacAddress holder = LearnFromOption(target, m, NdpOption.TargetLinkLayerAddress) ?? srcMac;
                    if (_o.InPrefix6(target))
                    {
                        _guest6.Note(holder, target, _now); // RFC 4861 §7.2.6: an address the guest announces
                    }
                    return;
                }
            case Icmpv6Type.EchoRequest when !multicast && !unspecified:
                if (m.Length < 8)
                {
                    Counters.Ipv6Malformed++;
                }
                else if (IsOurs6(ip.Destination) && ip.Destination != _host6)
                {
                    // RFC 4443 §4.2: the reply carries the request's identifier, sequence and data, from the address asked.
                    SendEchoReply6(srcMac, ip.Destination, ip.Source, m);
                }
                else if (Carried6(ip.Destination))
                {
                    // NAT66: the host alias's echo goes to the host's ::1, others to their destination.
                    if (_flows.Icmp6EchoRequested(ip.Source, ip.Destination, BinaryPrimitives.ReadUInt16BigEndian(m.Slice(4)),
                        BinaryPrimitives.ReadUInt16BigEndian(m.Slice(6)), m.Slice(8)) == FlowVerdict.Rejected)
                    {
                        SendUnreachable6(srcMac, ip, AdministrativelyProhibited);
                    }
                }
                else
                {
                    SendUnreachable6(srcMac, ip, AdministrativelyProhibited);
                }
                return;
            default:
                return; // Echo replies, MLD, errors: nothing to do.
        }
    }

    private void HandleNeighborSolicitation(MacAddress srcMac, Ipv6Packet ip, ReadOnlySpan<byte> m, bool unspecified)
    {
        // RFC 4861 §7.1.1: a unicast target; from the unspecified address (DAD) only to a solicited-node group and
        // without a source link-layer option.
        if (!Ndp.IsValid(m, ip.HopLimit))
        {
            Counters.NdpInvalid++;
            return;
        }
        UInt128 target = Ndp.Target(m);
        if (Ip6.IsMulticast(target)
            || (unspecified && (ip.Destination != Ip6.SolicitedNode(target) || Ndp.TryGetLinkLayerAddress(m, NdpOption.SourceLinkLayerAddress, out _))))
        {
            Counters.NdpInvalid++;
            return;
        }
        if (!IsOurs6(target))
        {
            if (unspecified && _o.InPrefix6(target))
            {
                // RFC 4862 §5.4.2: a guest's DAD names the address it is about to take (SLAAC, §5.5.3); it may send
                // nothing from it before a host client connects to a published port.
                _guest6.Note(srcMac, target, _now);
            }
            return; // Another guest's address (the switch carries their exchange), or a guest's own DAD.
        }
        MacAddress replyMac = srcMac;
        UInt128 replyTo = ip.Source;
        if (unspecified)
        {
            // RFC 4861 §7.2.4: DAD for one of our addresses is defended to all nodes, unsolicited.
            replyTo = Ip6.AllNodes;
            replyMac = Ip6.MulticastMac(Ip6.AllNodes);
        }
        else if (LearnFromOption(ip.Source, m, NdpOption.SourceLinkLayerAddress) is MacAddress sll)
        {
            replyMac = sll;
        }
        Span<byte> reply = _tx.AsSpan(Ip6At);
        // The host alias is a host on the link, not a router: R is set for the gateway's addresses only (§4.4).
        int length = Ndp.WriteNeighborAdvertisement(reply, target, _o.GatewayMac, router: target != _host6, solicited: !unspecified, @override: true);
        Counters.NdpReplies++;
        SendIcmpv6(replyMac, target, replyTo, 255, length);
    }

    /// <summary>Learns the address from a link-layer option (or the frame's source when absent); the MAC used, or null.</summary>
    private MacAddress? LearnFromOption(UInt128 address, ReadOnlySpan<byte> m, byte option)
    {
        if (Ip6.IsUnspecified(address) || !Ndp.TryGetLinkLayerAddress(m, option, out MacAddress mac))
        {
            return null;
        }
        Learn6(address, mac);
        return mac;
    }

    /// <summary>
    /// Remembers a guest's address and MAC (only link-local and in-prefix unicast, never the gateway's). A new entry
    /// is a guest appearing: the initial RAs start (RFC 4861 §6.2.4), so a guest that solicited before the gateway
    /// was there still configures itself.
    /// </summary>
    private void Learn6(UInt128 address, MacAddress mac)
    {
        if (mac.IsMulticast || mac == MacAddress.Zero || IsOurs6(address) || !(Ip6.IsLinkLocal(address) || _o.InPrefix6(address)))
        {
            return;
        }
        if (_neighbours.TryGetValue(address, out Neighbour known))
        {
            if (known.Mac != mac || _now - known.Seen > 1000)
            {
                _neighbours[address] = new Neighbour(mac, _now);
            }
            return;
        }
        if (_neighbours.Count >= MaxNeighbours)
        {
            UInt128 oldest = default;
            long seen = long.MaxValue;
            foreach (KeyValuePair<UInt128, Neighbour> kv in _neighbours)
            {
                if (kv.Value.Seen < seen)
                {
                    seen = kv.Value.Seen;
                    oldest = kv.Key;
                }
            }
            _neighbours.Remove(oldest);
        }
        _neighbours[address] = new Neighbour(mac, _now);
        if (_initialRas == 0)
        {
            _initialRas = MaxInitialRas;
            ScheduleRouterAdvertisement(_now);
        }
    }

    /// <summary>A multicast RA at <paramref name="at"/>, or 3 s after the last one (RFC 4861 §6.2.6), whichever is later.</summary>
    private void ScheduleRouterAdvertisement(long at)
    {
        long due = Math.Max(at, _lastRa + MinDelayBetweenRasMs);
        if (due < _raDue)
        {
            _raDue = due;
            ((ITcpSocketHost)this).WakeAt(due);
        }
    }

    /// <summary>Sends the RA that is due; returns when the next one is (absolute ms), or long.MaxValue.</summary>
    private long OnIpv6Timer(long now)
    {
        if (now >= _raDue)
        {
            _lastRa = now;
            SendRouterAdvertisement(Ip6.MulticastMac(Ip6.AllNodes), Ip6.AllNodes);
            if (_initialRas > 0)
            {
                _initialRas--;
            }
            _raDue = _initialRas > 0 ? now + InitialRaIntervalMs : _neighbours.Count > 0 ? now + MaxRtrAdvIntervalMs : long.MaxValue;
        }
        return _raDue;
    }

    /// <summary>
    /// RFC 4861 §4.2, from the link-local address (§6.1.2): the prefix with L and A (SLAAC, RFC 4862 §5.5.3), O set
    /// (stateless DHCPv6 has more), the MTU, and the gateway as DNS server and the search list (RFC 8106 §5), the list
    /// left out if it would not fit the MTU.
    /// </summary>
    private void SendRouterAdvertisement(MacAddress dstMac, UInt128 dst)
    {
        Span<byte> m = _tx.AsSpan(Ip6At);
        int at = Ndp.WriteRouterAdvertisement(m, 64, managed: false, other: true, RouterLifetime);
        at += Ndp.WriteLinkLayerOption(m.Slice(at), NdpOption.SourceLinkLayerAddress, _o.GatewayMac);
        at += Ndp.WriteMtuOption(m.Slice(at), (uint)_o.Mtu);
        at += Ndp.WritePrefixOption(m.Slice(at), _o.Ipv6Prefix, 64, onLink: true, autonomous: true, ValidLifetime, PreferredLifetime);
        at += Ndp.WriteRdnssOption(m.Slice(at), DnsLifetime, [_gw6]);
        if (_search6.Count > 0 && Ipv6Packet.HeaderLength + at + 8 + _searchWireLength + 7 <= _o.Mtu)
        {
            at += Ndp.WriteDnsslOption(m.Slice(at), DnsLifetime, _search6);
        }
        Counters.NdpReplies++;
        SendIcmpv6(dstMac, _ll6, dst, 255, at);
    }

    private void SendEchoReply6(MacAddress mac, UInt128 from, UInt128 to, ReadOnlySpan<byte> request)
    {
        if (Ipv6Packet.HeaderLength + request.Length > _o.Mtu)
        {
            return; // The gateway does not fragment (as for IPv4).
        }
        Span<byte> m = _tx.AsSpan(Ip6At, request.Length);
        request.CopyTo(m);
        m[0] = Icmpv6Type.EchoReply;
        m[1] = 0;
        SendIcmpv6(mac, from, to, 64, request.Length);
    }

    /// <summary>Checksums the ICMPv6 message already at <c>_tx[Ip6At..]</c>, puts the headers in front and sends it.</summary>
    private void SendIcmpv6(MacAddress dstMac, UInt128 src, UInt128 dst, byte hopLimit, int length)
    {
        Span<byte> f = _tx.AsSpan(0, Ip6At + length);
        Icmpv6Message.WriteChecksum(f.Slice(Ip6At), src, dst);
        WriteIpv6AndEthernet(f, dstMac, src, dst, Ipv6ExtensionChain.Icmpv6, hopLimit, length);
        Emit(f);
    }

    private void WriteIpv6AndEthernet(Span<byte> f, MacAddress dstMac, UInt128 src, UInt128 dst, byte nextHeader, byte hopLimit, int payloadLength)
    {
        EthernetFrame.Write(f, dstMac, _o.GatewayMac, EtherType.Ipv6);
        Ipv6Packet.Write(f.Slice(EthernetFrame.HeaderLength), payloadLength, nextHeader, hopLimit, src, dst);
    }

    /// <summary>
    /// RFC 4443 §3.1, rate-limited (§2.4(f)), never for an error, a group or the unspecified source (§2.4(e)): as much of
    /// the offending packet as fits in the minimum MTU, from the gateway's address in the guest's scope.
    /// </summary>
    private void SendUnreachable6(MacAddress mac, Ipv6Packet ip, byte code)
    {
        if (!TakeErrorToken())
        {
            return;
        }
        int quoted = Math.Min(ip.Bytes.Length, Math.Min(1280, _o.Mtu) - Ipv6Packet.HeaderLength - 8);
        Span<byte> m = _tx.AsSpan(Ip6At, 8 + quoted);
        m.Slice(0, 8).Clear();
        m[0] = Icmpv6Type.DestinationUnreachable;
        m[1] = code;
        ip.Bytes.Slice(0, quoted).CopyTo(m.Slice(8));
        UInt128 from = IsOurs6(ip.Destination) ? ip.Destination : Ip6.IsLinkLocal(ip.Source) ? _ll6 : _gw6;
        Counters.Ipv6Refused++;
        SendIcmpv6(mac, from, ip.Source, 64, m.Length);
    }

    /// <summary>
    /// Destination unreachable, port unreachable (RFC 4443 §3.1 code 4), from <c>flow.RemoteIp</c>: the host refused a
    /// datagram the guest sent on this flow. As for IPv4 (<see cref="SendPortUnreachable"/>) the invoking packet is rebuilt
    /// from the flow and the payload the host gave back, as much as fits the minimum MTU (RFC 4443 §2.4(c)); rate-limited
    /// with the other errors.
    /// </summary>
    public bool SendPortUnreachable6(in Udp6Flow flow, ReadOnlySpan<byte> payload, long now)
    {
        const int HeadersLength = Ipv6Packet.HeaderLength + UdpDatagram.HeaderLength;
        _now = now;
        if (!_neighbours.TryGetValue(flow.GuestIp, out Neighbour n) || !TakeErrorToken())
        {
            return false;
        }
        int body = Math.Min(payload.Length, Math.Min(1280, _o.Mtu) - Ipv6Packet.HeaderLength - 8 - HeadersLength);
        Span<byte> m = _tx.AsSpan(Ip6At, 8 + HeadersLength + body);
        Span<byte> quote = m.Slice(8);
        Span<byte> udp = quote.Slice(Ipv6Packet.HeaderLength);
        payload.Slice(0, body).CopyTo(udp.Slice(UdpDatagram.HeaderLength));
        UdpDatagram.Write(udp, flow.GuestPort, flow.RemotePort, 0, 0);
        ushort sum = Checksum6(udp, 6, flow.GuestIp, flow.RemoteIp, IpProtocol.Udp);
        BinaryPrimitives.WriteUInt16BigEndian(udp.Slice(6), sum == 0 ? (ushort)0xFFFF : sum);
        Ipv6Packet.Write(quote, udp.Length, IpProtocol.Udp, 64, flow.GuestIp, flow.RemoteIp);
        m.Slice(0, 8).Clear();
        m[0] = Icmpv6Type.DestinationUnreachable;
        m[1] = PortUnreachable;
        Counters.PortUnreachable++;
        SendIcmpv6(n.Mac, flow.RemoteIp, flow.GuestIp, 64, m.Length);
        return true;
    }

    /// <summary>A token bucket shared by ICMP and ICMPv6 errors and RSTs: a guest cannot make the gateway answer at line rate.</summary>
    private bool TakeErrorToken()
    {
        long refill = (_now - _errorRefilled) * ErrorsPerSecond / 1000;
        if (refill > 0)
        {
            _errorTokens = (int)Math.Min(ErrorBurst, _errorTokens + refill);
            _errorRefilled = _now;
        }
        else if (_now < _errorRefilled)
        {
            _errorRefilled = _now; // a clock that went back (tests): start counting again
        }
        if (_errorTokens == 0)
        {
            Counters.Icmpv6ErrorsLimited++;
            return false;
        }
        _errorTokens--;
        return true;
    }

    private void HandleUdp6(MacAddress srcMac, Ipv6Packet ip, ReadOnlySpan<byte> upper, bool multicast)
    {
        // RFC 8200 §8.1: over IPv6 the UDP checksum is mandatory; a zero one is discarded.
        if (!UdpDatagram.TryParse(upper, out UdpDatagram udp) || udp.Checksum == 0)
        {
            Counters.Ipv6Malformed++;
            return;
        }
        if (!Verify6(ip, upper, IpProtocol.Udp))
        {
            return;
        }
        UInt128 dst = ip.Destination;
        if (udp.DestinationPort == Dhcpv6.ServerPort && (dst == Dhcpv6.AllServers || dst == _ll6))
        {
            HandleDhcpv6(srcMac, ip.Source, udp.SourcePort, udp.Payload);
        }
        else if (multicast)
        {
            return; // mDNS, LLMNR, SSDP: not forwarded (as for IPv4).
        }
        else if (udp.DestinationPort == 53 && (dst == _gw6 || dst == _ll6) && Dns is { } dns)
        {
            dns.QueryReceived(new Udp6Flow(ip.Source, udp.SourcePort, dst, 53), udp.Payload);
        }
        else if (dst == _host6 && PublishedUdp6 is { } published && published.TryDeliver(new Udp6Flow(ip.Source, udp.SourcePort, dst, udp.DestinationPort), udp.Payload))
        {
            // A reply to a host client of a UDP port published on [::1] (it came from the host alias): not NAT66.
        }
        else if (Carried6(dst) && udp.SourcePort != 0 && udp.DestinationPort != 0)
        {
            if (_flows.Udp6Received(new Udp6Flow(ip.Source, udp.SourcePort, dst, udp.DestinationPort), udp.Payload) == FlowVerdict.Rejected)
            {
                SendUnreachable6(srcMac, ip, AdministrativelyProhibited);
            }
        }
        else
        {
            SendUnreachable6(srcMac, ip, IsOurs6(dst) ? PortUnreachable : AdministrativelyProhibited);
        }
    }

    /// <summary>
    /// Stateless DHCPv6 (RFC 8415 §6.1, §18.3.6): an Information-request gets a Reply with the DNS server and the
    /// search list, from the gateway's link-local address. Solicit (addresses) is not served: SLAAC assigns them.
    /// </summary>
    private void HandleDhcpv6(MacAddress mac, UInt128 client, ushort clientPort, ReadOnlySpan<byte> payload)
    {
        if (!Dhcpv6Message.TryParse(payload, out Dhcpv6Message m))
        {
            Counters.Ipv6Malformed++;
            return;
        }
        // RFC 8415 §11.1: a DUID is at most 130 bytes with its type.
        if (m.Type != Dhcpv6.InformationRequest || Ip6.IsUnspecified(client) || (m.TryGetOption(Dhcpv6.OptionClientId, out ReadOnlySpan<byte> clientId) && clientId.Length > 130))
        {
            return;
        }
        // Header, client id, server id (DUID-LL), one DNS server, the domains (left out if they would not fit).
        int fixedLength = Dhcpv6Message.HeaderLength + 4 + clientId.Length + 14 + 20;
        bool withSearch = Ipv6Packet.HeaderLength + UdpDatagram.HeaderLength + fixedLength + 4 + _searchWireLength <= _o.Mtu;
        Span<byte> reply = _tx.AsSpan(Ip6At + UdpDatagram.HeaderLength);
        int length = Dhcpv6Message.WriteReply(reply, m.TransactionId, clientId, _o.GatewayMac, [_gw6], withSearch ? _search6 : []);
        Counters.DhcpReplies++;
        SendUdp6To(mac, _ll6, Dhcpv6.ServerPort, client, clientPort, length);
    }

    /// <summary>
    /// Sends a datagram to a guest from <c>flow.RemoteIp:RemotePort</c> (a DNS answer). False if it cannot go out: too
    /// big for the link, or the guest's MAC is not known (a Neighbor Solicitation asks for it; the client retries).
    /// </summary>
    public bool SendUdp6(in Udp6Flow flow, ReadOnlySpan<byte> payload, long now)
    {
        _now = now;
        if (Ipv6Packet.HeaderLength + UdpDatagram.HeaderLength + payload.Length > _o.Mtu)
        {
            Counters.UdpTooLarge++;
            return false;
        }
        if (!_neighbours.TryGetValue(flow.GuestIp, out Neighbour n))
        {
            SendNeighborSolicitation(flow.GuestIp);
            return false;
        }
        payload.CopyTo(_tx.AsSpan(Ip6At + UdpDatagram.HeaderLength));
        SendUdp6To(n.Mac, flow.RemoteIp, flow.RemotePort, flow.GuestIp, flow.GuestPort, payload.Length);
        return true;
    }

    /// <summary>Sends the UDP payload already at <c>_tx[Ip6At + 8..]</c>.</summary>
    private void SendUdp6To(MacAddress mac, UInt128 src, ushort srcPort, UInt128 dst, ushort dstPort, int payloadLength)
    {
        int length = UdpDatagram.HeaderLength + payloadLength;
        Span<byte> f = _tx.AsSpan(0, Ip6At + length);
        Span<byte> d = f.Slice(Ip6At);
        UdpDatagram.Write(d, srcPort, dstPort, 0, 0);
        ushort sum = Checksum6(d, 6, src, dst, IpProtocol.Udp);
        // RFC 8200 §8.1: a computed zero goes out as all ones (zero means "none", which IPv6 forbids).
        BinaryPrimitives.WriteUInt16BigEndian(d.Slice(6), sum == 0 ? (ushort)0xFFFF : sum);
        WriteIpv6AndEthernet(f, mac, src, dst, IpProtocol.Udp, 64, length);
        Emit(f);
    }

    /// <summary>The checksum of an upper-layer message over the IPv6 pseudo-header (RFC 8200 §8.1), its field zeroed first.</summary>
    private static ushort Checksum6(Span<byte> upper, int checksumAt, UInt128 src, UInt128 dst, byte protocol)
    {
        upper[checksumAt] = 0;
        upper[checksumAt + 1] = 0;
        return Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(src, dst, protocol, upper.Length), upper));
    }

    /// <summary>Asks for a guest address's MAC (RFC 4861 §7.2.2), to its solicited-node group.</summary>
    private void SendNeighborSolicitation(UInt128 target)
    {
        if (!(Ip6.IsLinkLocal(target) || _o.InPrefix6(target)) || IsOurs6(target))
        {
            return;
        }
        UInt128 group = Ip6.SolicitedNode(target);
        int length = Ndp.WriteNeighborSolicitation(_tx.AsSpan(Ip6At), target, _o.GatewayMac);
        SendIcmpv6(Ip6.MulticastMac(group), Ip6.IsLinkLocal(target) ? _ll6 : _gw6, group, 255, length);
    }

    /// <summary>
    /// TCP over IPv6 (NAT66): the same table and engine as IPv4 (<see cref="HandleSegment"/>); new flows may go to the
    /// destinations <see cref="Carried6"/> names, and every other segment is answered as if no connection existed
    /// (RFC 9293 §3.10.7.1), so a connect to anything else fails at once (ECONNREFUSED).
    /// </summary>
    private void HandleTcp6(MacAddress srcMac, Ipv6Packet ip, ReadOnlySpan<byte> upper)
    {
        if (!TcpSegment.TryParse(upper, out TcpSegment seg))
        {
            Counters.Ipv6Malformed++;
            return;
        }
        if (Verify6(ip, upper, IpProtocol.Tcp))
        {
            UInt128 dst = ip.Destination;
            // DNS over TCP (RFC 7766) to the address the RA's RDNSS and DHCPv6 name (or the link-local one, as for UDP):
            // the NAT hands it to the forwarder's TCP listener, as for 192.168.65.1:53.
            bool dnsTcp = seg.DestinationPort == 53 && (dst == _gw6 || dst == _ll6);
            HandleSegment(srcMac, IpAddr.V6(ip.Source), IpAddr.V6(dst), seg, dnsTcp || Carried6(dst));
        }
    }

    /// <summary>
    /// Where NAT66 carries a guest's packets: the host alias (to the host's ::1) and unicast destinations off the link.
    /// Never: the unspecified, loopback, IPv4-compatible and IPv4-mapped addresses (::/96 and ::ffff:0:0/96: a host IPv6
    /// socket would reach IPv4 with them, around the IPv4 rules), link-local and multicast ones, the gateway's own, and
    /// the prefix (other guests: the switch carries their traffic, not the NAT).
    /// </summary>
    private bool Carried6(UInt128 dst) => dst == _host6
        || !(IsOurs6(dst) || (dst >> 32) == 0 || (dst >> 32) == 0xFFFF || Ip6.IsLinkLocal(dst) || Ip6.IsMulticast(dst) || _o.InPrefix6(dst));

    /// <summary>
    /// An echo reply to a guest from <paramref name="from"/> (what NAT66 got back from the host's socket): the guest's
    /// own identifier, sequence and data (RFC 4443 §4.2). Dropped when too big for the link or the guest is not known.
    /// </summary>
    public void SendIcmp6EchoReply(UInt128 from, UInt128 guest, ushort id, ushort seq, ReadOnlySpan<byte> data, long now)
    {
        _now = now;
        if (Ipv6Packet.HeaderLength + 8 + data.Length > _o.Mtu || !_neighbours.TryGetValue(guest, out Neighbour n))
        {
            return;
        }
        Span<byte> m = _tx.AsSpan(Ip6At, 8 + data.Length);
        data.CopyTo(m.Slice(8));
        m[0] = Icmpv6Type.EchoReply;
        m[1] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(m.Slice(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(m.Slice(6), seq);
        SendIcmpv6(n.Mac, from, guest, 64, m.Length);
    }
}
