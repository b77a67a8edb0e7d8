using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Kit.Linux;
using Kit.VpnKit.Wire;
using Microsoft.Win32.SafeHandles;

namespace Kit.VpnKit.Links;

/// <summary>
/// A Linux TAP device (Documentation/networking/tuntap.rst): IFF_TAP | IFF_NO_PI, so each read or write is exactly
/// one Ethernet frame. Reads and writes are plain read(2)/write(2) (readv/writev with the virtio-net header), by
/// P/Invoke on the device's descriptor; the gateway's event loop polls it (<see cref="IPollableLink"/>).
/// With offload, IFF_VNET_HDR puts a 10-byte struct virtio_net_hdr (virtio spec §5.1.6) before every frame and
/// TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6) lets both sides exchange 64 KiB TCP segments of either family
/// with partial checksums:
/// one read or write then carries what would otherwise be ~44 frames at MTU 1500. The device is opened by
/// <see cref="Tap.Open"/>, shared with HyperKit's TAP backend.
/// </summary>
public sealed partial class TapLink : IPollableLink
{
    private const int VnetHeader = Tap.LegacyVirtioHeader;
    private const byte NeedsCsum = 1;
    private const byte DataValid = 2;
    private const byte GsoNone = 0, GsoTcpV4 = 1, GsoTcpV6 = 4, GsoEcn = 0x80;

    private readonly SafeFileHandle _handle;
    private readonly bool _vnet;

    private TapLink(SafeFileHandle handle, string name, int mtu, bool vnet)
    {
        _handle = handle;
        Name = name;
        MaxFrame = mtu + 14;
        _vnet = vnet;
    }

    public string Name { get; }
    public int MaxFrame { get; }
    /// <summary>The families whose TCP the device segments both ways: both with offload, none without.</summary>
    public TcpOffload Offload => _vnet ? TcpOffload.Ipv4 | TcpOffload.Ipv6 : TcpOffload.None;

    /// <summary>Frames dropped because their virtio-net header contradicted them (<see cref="HeaderFits"/>).</summary>
    public long BadHeaders { get; private set; }
    public bool LastFrameTrusted { get; private set; }

    /// <summary>
    /// Creates (or attaches to) the TAP device <paramref name="name"/> in the caller's network namespace.
    /// <paramref name="offload"/> turns on the virtio-net header with checksum, TSO4 and TSO6 offload.
    /// </summary>
    public static TapLink Open(string name, int mtu, bool offload = false)
    {
        SafeFileHandle handle = Tap.Open(name, offload ? VnetHeader : 0, out string actual, tso6: offload);
        return new TapLink(handle, actual, mtu, offload);
    }

    /// <summary>Blocks for the next frame (a link read on a thread of its own; the event loop uses TryReceive).</summary>
    public int Receive(Span<byte> buffer)
    {
        while (true)
        {
            int n = ReadFrame(buffer, out int errno);
            if (n >= 0 || errno != Sys.EINTR)
            {
                return Math.Max(n, 0);
            }
        }
    }

    SafeFileHandle IPollableLink.BeginPolling()
    {
        if (!Sys.SetNonBlocking(_handle))
        {
            throw new IOException($"cannot make {Name} non-blocking: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        return _handle;
    }

    int IPollableLink.TryReceive(Span<byte> buffer)
    {
        while (true)
        {
            int n = ReadFrame(buffer, out int errno);
            if (n >= 0)
            {
                return n;
            }
            if (errno != Sys.EINTR)
            {
                return errno == Sys.EAGAIN ? -1 : 0;
            }
        }
    }

    /// <summary>
    /// One read: the frame lands in <paramref name="buffer"/> directly, its virtio-net header (with offload) in a
    /// separate 10-byte vector (readv(2)), so a 64 KiB segment is not copied again. Returns the frame's length, 0 when
    /// the device is gone, -1 with <paramref name="errno"/> set. A frame too large for the buffer is skipped.
    /// </summary>
    private int ReadFrame(Span<byte> buffer, out int errno)
    {
        errno = 0;
        // Outside the loop: a stackalloc inside it would take new stack for every runt the device hands us.
        Span<byte> header = stackalloc byte[VnetHeader];
        while (true)
        {
            nint n;
            try
            {
                n = _vnet ? ReadVector(header, buffer) : Sys.Read(_handle, buffer);
            }
            catch (ObjectDisposedException)
            {
                return 0;
            }
            if (n < 0)
            {
                errno = Marshal.GetLastPInvokeError();
                return errno == Sys.EBADF ? 0 : -1;
            }
            if (n == 0 || !_vnet)
            {
                return (int)n;
            }
            if (n <= VnetHeader || n - VnetHeader > buffer.Length)
            {
                continue; // Runt, or truncated: dropped, as a NIC drops what does not fit its buffer.
            }
            int length = (int)n - VnetHeader;
            if (!HeaderFits(header, buffer[..length]))
            {
                BadHeaders++;
                continue;
            }
            // The kernel vouches for frames whose checksum it left partial or already validated.
            LastFrameTrusted = (header[0] & (NeedsCsum | DataValid)) != 0 || header[1] != 0;
            return length;
        }
    }

    /// <summary>
    /// Whether a received struct virtio_net_hdr agrees with its frame (virtio 1.2 §5.1.6.2.1, what a driver must send):
    /// a partial checksum's csum_start + csum_offset inside the frame; a GSO frame with NEEDS_CSUM, a gso_size, hdr_len
    /// inside the frame, of a type we turned on (TCPV4, TCPV6) and over an IP packet of that family. The kernel's
    /// frames always agree; one that does not is dropped rather than trusted with a checksum nobody verified.
    /// </summary>
    internal static bool HeaderFits(ReadOnlySpan<byte> header, ReadOnlySpan<byte> frame)
    {
        bool partial = (header[0] & NeedsCsum) != 0;
        if (partial && BinaryPrimitives.ReadUInt16LittleEndian(header[6..]) + BinaryPrimitives.ReadUInt16LittleEndian(header[8..]) + 2 > frame.Length)
        {
            return false;
        }
        int gso = header[1] & ~GsoEcn;
        if (gso == GsoNone)
        {
            return true;
        }
        if (!partial || BinaryPrimitives.ReadUInt16LittleEndian(header[4..]) == 0
            || BinaryPrimitives.ReadUInt16LittleEndian(header[2..]) > frame.Length || frame.Length <= EthernetFrame.HeaderLength)
        {
            return false;
        }
        ushort etherType = BinaryPrimitives.ReadUInt16BigEndian(frame[12..]);
        int version = frame[EthernetFrame.HeaderLength] >> 4;
        return gso switch
        {
            GsoTcpV4 => etherType == EtherType.Ipv4 && version == 4,
            GsoTcpV6 => etherType == EtherType.Ipv6 && version == 6,
            _ => false,
        };
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        if (!_vnet)
        {
            Write(frame);
            return;
        }
        Span<byte> header = stackalloc byte[VnetHeader];
        header.Clear();
        WriteVector(header, frame);
    }

    /// <summary>A TCP frame of either family with a partial checksum: the kernel finishes it and, if asked, segments it.</summary>
    public void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize)
    {
        if (!_vnet)
        {
            Write(frame);
            return;
        }
        Span<byte> h = stackalloc byte[VnetHeader];
        WriteOffloadHeader(h, frame, segmentSize);
        WriteVector(h, frame);
    }

    /// <summary>
    /// The struct virtio_net_hdr (legacy layout, little-endian fields as tun uses on little-endian hosts) for a TCP
    /// frame the gateway built: NEEDS_CSUM from the TCP header on, and with <paramref name="segmentSize"/> GSO_TCPV4 or
    /// GSO_TCPV6 by the IP version. The gateway's IPv6 header has no extension headers, so TCP follows it at 14 + 40.
    /// </summary>
    internal static void WriteOffloadHeader(Span<byte> h, ReadOnlySpan<byte> frame, int segmentSize)
    {
        const int ipAt = EthernetFrame.HeaderLength;
        bool v4 = frame[ipAt] >> 4 == 4;
        int tcpAt = ipAt + (v4 ? (frame[ipAt] & 0xF) * 4 : Ipv6Packet.HeaderLength);
        int thl = (frame[tcpAt + 12] >> 4) * 4;
        h[0] = NeedsCsum;
        h[1] = segmentSize == 0 ? GsoNone : v4 ? GsoTcpV4 : GsoTcpV6;
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(2), (ushort)(tcpAt + thl)); // hdr_len
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(4), (ushort)segmentSize);    // gso_size
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(6), (ushort)tcpAt);          // csum_start
        BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(8), 16);                     // csum_offset: TCP's checksum field
    }

    /// <summary>
    /// One write(2) per frame. A full TAP queue or a downed interface drops the frame, as a real NIC would (TCP
    /// retransmits); so does a closed device.
    /// </summary>
    private void Write(ReadOnlySpan<byte> bytes)
    {
        try
        {
            _ = Sys.Write(_handle, bytes);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>
    /// Header and frame in one writev(2): the frame is not copied behind the header first, and no buffer or lock is
    /// shared between the threads that send. Drops as <see cref="Write"/> does.
    /// </summary>
    private unsafe void WriteVector(ReadOnlySpan<byte> header, ReadOnlySpan<byte> frame)
    {
        try
        {
            // SAFETY: both spans are pinned by `fixed` for the duration of the call; the iovecs on the stack point into
            // them with their exact lengths; the kernel only reads them. The SafeHandle marshaller keeps the fd open.
            fixed (byte* h = header)
            fixed (byte* f = frame)
            {
                Iovec* iov = stackalloc Iovec[2];
                iov[0] = new Iovec { Base = h, Length = (nuint)header.Length };
                iov[1] = new Iovec { Base = f, Length = (nuint)frame.Length };
                _ = writev(_handle, iov, 2);
            }
        }
        catch (ObjectDisposedException)
        {
        }
    }

    /// <summary>readv(2) of the virtio-net header and the frame; the raw return value (errno is kept for the caller).</summary>
    private unsafe nint ReadVector(Span<byte> header, Span<byte> frame)
    {
        // SAFETY: both spans are pinned by `fixed` for the duration of the call; the iovecs on the stack point into them
        // with their exact lengths, so the kernel writes nowhere else. The SafeHandle marshaller keeps the fd open.
        fixed (byte* h = header)
        fixed (byte* f = frame)
        {
            Iovec* iov = stackalloc Iovec[2];
            iov[0] = new Iovec { Base = h, Length = (nuint)header.Length };
            iov[1] = new Iovec { Base = f, Length = (nuint)frame.Length };
            return readv(_handle, iov, 2);
        }
    }

    /// <summary>struct iovec (uio.h).</summary>
    private unsafe struct Iovec
    {
        public byte* Base;
        public nuint Length;
    }

    public void Dispose() => _handle.Dispose();

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint readv(SafeFileHandle fd, Iovec* iov, int count);

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial nint writev(SafeFileHandle fd, Iovec* iov, int count);
}
