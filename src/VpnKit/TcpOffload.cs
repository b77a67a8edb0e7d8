namespace Kit.VpnKit;

/// <summary>
/// Which families' TCP a guest link takes as large segments with partial checksums, for the link (the kernel behind a
/// TAP, the guest's virtio-net driver) to cut at the MSS and finish: the virtio-net GSO types it accepts (virtio 1.2
/// §5.1.6: VIRTIO_NET_HDR_GSO_TCPV4 = 1, GSO_TCPV6 = 4). A family without its flag leaves at the MSS, checksummed.
/// </summary>
[Flags]
public enum TcpOffload
{
    None = 0,
    /// <summary>GSO_TCPV4: a TAP with TUN_F_TSO4, virtio-net with HOST_TSO4.</summary>
    Ipv4 = 1,
    /// <summary>GSO_TCPV6: a TAP with TUN_F_TSO6.</summary>
    Ipv6 = 2,
}
