using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Kit.Linux;

/// <summary>
/// Opens a Linux TAP device (Documentation/networking/tuntap.rst) for HyperKit's virtio-net TAP backend and VPNKit's
/// TAP link: IFF_TAP | IFF_NO_PI, so each read or write is exactly one Ethernet frame, optionally behind a virtio-net
/// header (IFF_VNET_HDR) with checksum and TCPv4 segmentation offload. Reading and writing are the caller's.
/// </summary>
public static partial class Tap
{
    private const uint TUNSETIFF = 0x400454ca;       // _IOW('T', 202, int)
    private const uint TUNSETOFFLOAD = 0x400454d0;   // _IOW('T', 208, unsigned int)
    private const uint TUNSETVNETHDRSZ = 0x400454d8; // _IOW('T', 216, int)
    private const short IFF_TAP = 0x0002, IFF_NO_PI = 0x1000, IFF_VNET_HDR = 0x4000;
    private const uint TUN_F_CSUM = 0x01, TUN_F_TSO4 = 0x02, TUN_F_TSO6 = 0x04;
    private const int IFNAMSIZ = 16;

    /// <summary>The legacy struct virtio_net_hdr (virtio 1.2 §5.1.6), the TAP's own default.</summary>
    public const int LegacyVirtioHeader = 10;

    /// <summary>struct virtio_net_hdr_v1, with num_buffers (virtio 1.2 §5.1.6), as a VERSION_1 device uses it.</summary>
    public const int VirtioHeaderV1 = 12;

    /// <summary>
    /// Creates (or attaches to) TAP <paramref name="name"/> in the caller's network namespace; the caller configures
    /// its address and brings it up. An empty name lets the kernel choose one (tapN).
    /// </summary>
    /// <param name="name">The interface name, at most 15 bytes.</param>
    /// <param name="virtioHeader">
    /// 0: plain frames. <see cref="LegacyVirtioHeader"/> or <see cref="VirtioHeaderV1"/>: that many bytes of
    /// virtio-net header (little-endian fields) before every frame both ways (IFF_VNET_HDR, TUNSETVNETHDRSZ), with
    /// TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4), so partial checksums and 64 KiB TCPv4 segments pass both ways untouched.
    /// </param>
    /// <param name="tso6">
    /// With a header, TUN_F_TSO6 too: 64 KiB TCPv6 segments (GSO_TCPV6) pass both ways. Only for a reader that takes
    /// them (VPNKit's TAP link); a virtio-net guest without GUEST_TSO6 could not.
    /// </param>
    /// <param name="actualName">The name the device has (the kernel's choice for an empty name).</param>
    /// <exception cref="ArgumentException">The name is too long, or the header size is none of the three.</exception>
    /// <exception cref="IOException">/dev/net/tun cannot be opened or refused a setting; the message says which.</exception>
    public static SafeFileHandle Open(string name, int virtioHeader, out string actualName, bool tso6 = false)
    {
        byte[] n = Encoding.ASCII.GetBytes(name);
        if (n.Length >= IFNAMSIZ)
        {
            throw new ArgumentException($"interface name too long: {name}");
        }
        if (virtioHeader is not (0 or LegacyVirtioHeader or VirtioHeaderV1))
        {
            throw new ArgumentOutOfRangeException(nameof(virtioHeader), virtioHeader, "a virtio-net header is 0, 10 or 12 bytes");
        }
        int fd = Sys.Open("/dev/net/tun", Sys.O_RDWR | Sys.O_CLOEXEC);
        if (fd < 0)
        {
            throw new IOException($"cannot open /dev/net/tun: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        // struct ifreq: char ifr_name[IFNAMSIZ]; short ifr_flags; padded to 40 bytes.
        byte[] ifr = new byte[40];
        n.CopyTo(ifr, 0);
        BinaryPrimitives.WriteInt16LittleEndian(ifr.AsSpan(IFNAMSIZ), (short)(IFF_TAP | IFF_NO_PI | (virtioHeader > 0 ? IFF_VNET_HDR : 0)));
        Check(handle, IoctlBytes(fd, TUNSETIFF, ifr), "TUNSETIFF", name);
        if (virtioHeader > 0)
        {
            int[] size = [virtioHeader];
            Check(handle, IoctlInts(fd, TUNSETVNETHDRSZ, size), "TUNSETVNETHDRSZ", name);
            Check(handle, IoctlValue(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | (tso6 ? TUN_F_TSO6 : 0)), "TUNSETOFFLOAD", name);
        }
        int z = Array.IndexOf(ifr, (byte)0);
        actualName = Encoding.ASCII.GetString(ifr, 0, z is >= 0 and < IFNAMSIZ ? z : IFNAMSIZ);
        return handle;
    }

    private static void Check(SafeFileHandle handle, int result, string call, string name)
    {
        if (result < 0)
        {
            string err = Marshal.GetLastPInvokeErrorMessage();
            handle.Dispose();
            throw new IOException($"TAP {name}: {call}: {err}");
        }
    }

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int IoctlBytes(int fd, nuint request, byte[] argument);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int IoctlInts(int fd, nuint request, int[] argument);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int IoctlValue(int fd, nuint request, nuint argument);
}
