namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>What a backend can carry, fixed before the guest negotiates features.</summary>
/// <param name="Offload">
/// Frames may cross with partial checksums and as TCPv4 super-segments (the virtio-net header's NEEDS_CSUM and
/// GSO_TCPV4 meanings), so the device offers CSUM, GUEST_CSUM, HOST_TSO4 and GUEST_TSO4.
/// </param>
/// <param name="Mtu">The link MTU to announce (VIRTIO_NET_F_MTU), or 0 for none.</param>
/// <param name="Mac">The MAC the backend assigned to the guest, or null to keep the device's own.</param>
public sealed record NetBackendInfo(bool Offload, int Mtu, byte[]? Mac = null);

/// <summary>
/// Where a virtio-net device's frames go on the host: VPNKit in the same process, a vpnkit-compatible server over
/// VMN3T, a TAP device. The backend reads guest frames from <see cref="NetPort.Transmitted"/> on its own thread and
/// hands host frames to <see cref="NetPort.Deliver"/> from any thread.
/// </summary>
public interface INetBackend : IDisposable
{
    NetBackendInfo Info { get; }

    /// <summary>Starts moving frames; called once, when the device is built.</summary>
    void Attach(NetPort port);
}

/// <summary>
/// The device side of a backend connection. Guest frames wait in <see cref="Transmitted"/> as records of
/// [12-byte virtio_net_hdr][frame] (one reader: the backend); host frames go through <see cref="Deliver"/>.
/// </summary>
public sealed class NetPort
{
    private readonly VirtioNet _device;

    internal NetPort(VirtioNet device, FrameRing transmitted)
    {
        _device = device;
        Transmitted = transmitted;
    }

    /// <summary>Guest-to-host records; the backend peeks, sends, releases.</summary>
    public FrameRing Transmitted { get; }

    /// <summary>
    /// A frame for the guest, with its offload header (flags 0 for a plain frame). Copied once into the device's
    /// receive ring and then into guest buffers; returns false when it was dropped (ring full, too large).
    /// </summary>
    public bool Deliver(in VirtioNetHeader header, ReadOnlySpan<byte> frame) => _device.Deliver(header, frame);

    /// <summary>Plain frame, full checksums.</summary>
    public bool Deliver(ReadOnlySpan<byte> frame) => _device.Deliver(default, frame);

    /// <summary>The backend closed (peer gone): the link goes down in the device's status.</summary>
    public void Disconnected() => _device.SetLinkUp(false);
}

/// <summary>MAC addresses for guests.</summary>
public static class NetMacs
{
    /// <summary>A random unicast, locally administered MAC (IEEE 802: bit 1 of the first octet set, bit 0 clear).</summary>
    public static byte[] Random()
    {
        byte[] mac = new byte[6];
        System.Security.Cryptography.RandomNumberGenerator.Fill(mac);
        mac[0] = (byte)((mac[0] & 0xFC) | 0x02);
        return mac;
    }

    /// <summary>Parses xx:xx:xx:xx:xx:xx; false for anything else or a multicast address.</summary>
    public static bool TryParse(string text, out byte[] mac)
    {
        mac = new byte[6];
        string[] parts = text.Split(':');
        if (parts.Length != 6)
        {
            return false;
        }
        for (int i = 0; i < 6; i++)
        {
            if (parts[i].Length != 2 || !byte.TryParse(parts[i], System.Globalization.NumberStyles.HexNumber, null, out mac[i]))
            {
                return false;
            }
        }
        return (mac[0] & 1) == 0;
    }
}
