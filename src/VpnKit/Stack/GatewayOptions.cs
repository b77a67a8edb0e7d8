using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Stack;

/// <summary>
/// The virtual network the gateway serves (design.md "Defaults", vpnkit-compatible): gateway and DNS .1, host alias .2
/// (which reaches the host's loopback), guests from .3 upward, MTU 1500.
/// </summary>
internal sealed class GatewayOptions
{
    public static readonly UInt128 DefaultIpv6Prefix = Ip6.Parse("fd00:6b69:7400::");

    public uint GatewayIp { get; init; } = Ip4.FromBytes(192, 168, 65, 1);
    public uint HostIp { get; init; } = Ip4.FromBytes(192, 168, 65, 2);
    public uint FirstGuestIp { get; init; } = Ip4.FromBytes(192, 168, 65, 3);
    public uint LastGuestIp { get; init; } = Ip4.FromBytes(192, 168, 65, 254);
    public int PrefixLength { get; init; } = 24;
    /// <summary>vpnkit's server MAC, kept so captures look familiar.</summary>
    public MacAddress GatewayMac { get; init; } = new(0xF6_16_36_BC_F9_C6UL);
    public int Mtu { get; init; } = 1500;
    public string DomainName { get; init; } = "localdomain";
    public IReadOnlyList<string> SearchDomains { get; init; } = [];
    /// <summary>Connections the table may hold at once; SYNs beyond it are answered with RST.</summary>
    public int MaxTcpConnections { get; init; } = 4096;
    /// <summary>Host connects in flight; further SYNs are dropped (the guest retransmits), as a SYN-flood bound.</summary>
    public int MaxPendingConnects { get; init; } = 256;
    /// <summary>Per-connection buffer in each direction. Its free space is the window we advertise (back-pressure).</summary>
    public int TcpBufferSize { get; init; } = 512 * 1024;
    /// <summary>
    /// The families whose TCP the link segments and checksums (virtio-net's HOST_TSO4 + CSUM: IPv4; a TAP with
    /// IFF_VNET_HDR and TUN_F_TSO4 | TUN_F_TSO6: both): for those the engine emits TCP segments of up to 64 KiB with
    /// partial checksums and the kernel cuts them at the MSS; the others leave at the MSS, checksummed.
    /// </summary>
    public TcpOffload SegmentationOffload { get; init; }

    /// <summary>
    /// DHCP lease time in seconds (option 51, RFC 2132 §9.2). Two hours, with the client renewing at half time: a guest
    /// that stops renewing frees its address two hours later at most; one that keeps renewing never notices.
    /// </summary>
    public int DhcpLeaseSeconds { get; init; } = 2 * 60 * 60;
    /// <summary>
    /// Live leases one link may hold. A VM or namespace has one or a few interfaces per link; 16 leaves room for
    /// containers with their own MACs behind a bridge, while one guest spoofing client MACs cannot empty the 252-address
    /// pool for the others.
    /// </summary>
    public int MaxLeasesPerLink { get; init; } = 16;

    /// <summary>Secret mixed into initial sequence numbers (RFC 6528); the driver passes a random one, tests a fixed one.</summary>
    public ulong IsnSecret { get; init; }

    public uint SubnetMask => PrefixLength == 0 ? 0 : uint.MaxValue << (32 - PrefixLength);

    public bool InSubnet(uint ip) => (ip & SubnetMask) == (GatewayIp & SubnetMask);

    public uint Broadcast => (GatewayIp & SubnetMask) | ~SubnetMask;

    /// <summary>IPv6 on the guest link (NDP, SLAAC, ICMPv6 echo, DHCPv6, DNS); off: every IPv6 frame is dropped.</summary>
    public bool Ipv6 { get; init; } = true;

    /// <summary>
    /// The guest /64 (RFC 4193 ULA). RFC 4193 §3.2.2 wants a random Global ID; a fixed, documented one is what users
    /// script against (as they do 192.168.65.0/24), and one guest network per gateway never meets another site's.
    /// 6b:69:74 is "kit" in ASCII.
    /// </summary>
    public UInt128 Ipv6Prefix { get; init; } = DefaultIpv6Prefix;

    /// <summary>The gateway in the prefix (::1): DNS, echo, the address guests query.</summary>
    public UInt128 GatewayIp6 => Ipv6Prefix | 1;

    /// <summary>The host alias in the prefix (::2), as 192.168.65.2 is in IPv4.</summary>
    public UInt128 HostIp6 => Ipv6Prefix | 2;

    /// <summary>The gateway's link-local address: fe80::/64 and the modified EUI-64 of its MAC (RFC 4291 §2.5.1, App. A).</summary>
    public UInt128 GatewayLinkLocal6 => Ip6.LinkLocalFromMac(GatewayMac);

    public bool InPrefix6(UInt128 a) => (a >> 64) == (Ipv6Prefix >> 64);

    /// <summary>MSS for a 20-byte IPv4 and 20-byte TCP header without options (RFC 9293 §3.7.1).</summary>
    public int Mss => Mtu - 40;
}
