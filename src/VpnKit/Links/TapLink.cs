using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Kit.VpnKit.Links;

/// <summary>
/// A Linux TAP device (Documentation/networking/tuntap.rst): IFF_TAP | IFF_NO_PI, so each read or write is exactly
/// one Ethernet frame. The fd is wrapped in an unbuffered FileStream, so reads and writes are plain read(2)/write(2)
/// and only the ioctls need P/Invoke.
/// With offload, IFF_VNET_HDR puts a 10-byte struct virtio_net_hdr (virtio spec §5.1.6) before every frame and
/// TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4) lets both sides exchange 64 KiB TCP segments with partial checksums:
/// one read or write then carries what would otherwise be ~44 frames at MTU 1500.
/// </summary>
public sealed partial class TapLink : IPollableLink
{
    private const uint TunSetIff = 0x400454ca;     // _IOW('T', 202, int)
    private const uint TunSetOffload = 0x400454d0; // _IOW('T', 208, unsigned int)
    private const short IffTap = 0x0002;
    private const short IffNoPi = 0x1000;
    private const short IffVnetHdr = 0x4000;
    private const uint TunFCsum = 0x01;
    private const uint TunFTso4 = 0x02;
    private const int ORdWr = 2;
    private const int Eagain = 11;
    private const int Eintr = 4;
    private const int OCloexec = 0x80000;
    private const int VnetHeader = 10;
    private const byte NeedsCsum = 1;
    private const byte DataValid = 2;
    private const byte GsoTcpV4 = 1;

    private readonly FileStream _stream;
    private readonly SafeFileHandle _handle;
    private readonly bool _vnet;
    private readonly byte[] _rx;
    private readonly byte[] _txBuffer;
    private readonly object _txGate = new();

    private TapLink(SafeFileHandle handle, string name, int mtu, bool vnet)
    {
        _handle = handle;
        _stream = new FileStream(handle, FileAccess.ReadWrite, bufferSize: 0);
        Name = name;
        MaxFrame = mtu + 14;
        _vnet = vnet;
        _rx = vnet ? new byte[VnetHeader + 70_000] : [];
        _txBuffer = vnet ? new byte[VnetHeader + 70_000] : [];
    }

    public string Name { get; }
    public int MaxFrame { get; }
    public bool Offload => _vnet;
    public bool LastFrameTrusted { get; private set; }

    /// <summary>
    /// Creates (or attaches to) the TAP device <paramref name="name"/> in the caller's network namespace.
    /// <paramref name="offload"/> turns on the virtio-net header with checksum and TSO4 offload.
    /// </summary>
    public static TapLink Open(string name, int mtu, bool offload = false)
    {
        int fd = open("/dev/net/tun", ORdWr | OCloexec);
        if (fd < 0)
        {
            throw new IOException($"cannot open /dev/net/tun: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        // struct ifreq: char ifr_name[IFNAMSIZ = 16]; short ifr_flags; padded to 40 bytes.
        byte[] ifr = new byte[40];
        byte[] n = Encoding.ASCII.GetBytes(name);
        if (n.Length > 15)
        {
            handle.Dispose();
            throw new ArgumentException($"interface name too long: {name}");
        }
        n.CopyTo(ifr, 0);
        BinaryPrimitives.WriteInt16LittleEndian(ifr.AsSpan(16), (short)(IffTap | IffNoPi | (offload ? IffVnetHdr : 0)));
        if (ioctl(fd, TunSetIff, ifr) < 0)
        {
            string err = Marshal.GetLastPInvokeErrorMessage();
            handle.Dispose();
            throw new IOException($"TUNSETIFF {name}: {err}");
        }
        if (offload && ioctl(fd, TunSetOffload, TunFCsum | TunFTso4) < 0)
        {
            string err = Marshal.GetLastPInvokeErrorMessage();
            handle.Dispose();
            throw new IOException($"TUNSETOFFLOAD {name}: {err}");
        }
        int z = Array.IndexOf(ifr, (byte)0);
        string actual = Encoding.ASCII.GetString(ifr, 0, z is >= 0 and < 16 ? z : 16);
        return new TapLink(handle, actual, mtu, offload);
    }

    public int Receive(Span<byte> buffer)
    {
        try
        {
            if (!_vnet)
            {
                return _stream.Read(buffer);
            }
            while (true)
            {
                int n = _stream.Read(_rx);
                if (n <= 0)
                {
                    return 0;
                }
                if (n <= VnetHeader || n - VnetHeader > buffer.Length)
                {
                    continue;
                }
                // The kernel vouches for frames whose checksum it left partial or already validated.
                LastFrameTrusted = (_rx[0] & (NeedsCsum | DataValid)) != 0 || _rx[1] != 0;
                _rx.AsSpan(VnetHeader, n - VnetHeader).CopyTo(buffer);
                return n - VnetHeader;
            }
        }
        catch (IOException)
        {
            return 0;
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
    }

    SafeFileHandle IPollableLink.BeginPolling()
    {
        if (!Epoll.SetNonBlocking(_handle))
        {
            throw new IOException($"cannot make {Name} non-blocking: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        return _handle;
    }

    int IPollableLink.TryReceive(Span<byte> buffer)
    {
        while (true)
        {
            Span<byte> into = _vnet ? _rx : buffer;
            nint n;
            try
            {
                n = read(_handle, into, into.Length);
            }
            catch (ObjectDisposedException)
            {
                return 0;
            }
            if (n < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Eintr)
                {
                    continue;
                }
                return errno == Eagain ? -1 : 0;
            }
            if (n == 0 || !_vnet)
            {
                return (int)n;
            }
            if (n <= VnetHeader || n - VnetHeader > buffer.Length)
            {
                continue;
            }
            LastFrameTrusted = (_rx[0] & (NeedsCsum | DataValid)) != 0 || _rx[1] != 0;
            _rx.AsSpan(VnetHeader, (int)n - VnetHeader).CopyTo(buffer);
            return (int)n - VnetHeader;
        }
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        if (!_vnet)
        {
            Write(frame);
            return;
        }
        lock (_txGate)
        {
            _txBuffer.AsSpan(0, VnetHeader).Clear();
            frame.CopyTo(_txBuffer.AsSpan(VnetHeader));
            Write(_txBuffer.AsSpan(0, VnetHeader + frame.Length));
        }
    }

    /// <summary>A TCP/IPv4 frame with a partial checksum: the kernel finishes it and, if asked, segments it.</summary>
    public void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize)
    {
        if (!_vnet)
        {
            Write(frame);
            return;
        }
        const int ipAt = 14;
        int ihl = (frame[ipAt] & 0xF) * 4;
        int tcpAt = ipAt + ihl;
        int thl = (frame[tcpAt + 12] >> 4) * 4;
        lock (_txGate)
        {
            Span<byte> h = _txBuffer.AsSpan(0, VnetHeader);
            // struct virtio_net_hdr, little-endian fields (legacy layout, as tun uses on little-endian hosts).
            h[0] = NeedsCsum;
            h[1] = segmentSize > 0 ? GsoTcpV4 : (byte)0;
            BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(2), (ushort)(tcpAt + thl)); // hdr_len
            BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(4), (ushort)segmentSize);    // gso_size
            BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(6), (ushort)tcpAt);          // csum_start
            BinaryPrimitives.WriteUInt16LittleEndian(h.Slice(8), 16);                     // csum_offset
            frame.CopyTo(_txBuffer.AsSpan(VnetHeader));
            Write(_txBuffer.AsSpan(0, VnetHeader + frame.Length));
        }
    }

    /// <summary>
    /// One write(2) per frame. A full TAP queue or a downed interface drops the frame, as a real NIC would (TCP
    /// retransmits); so does a closed device.
    /// </summary>
    private void Write(ReadOnlySpan<byte> bytes)
    {
        try
        {
            _ = write(_handle, bytes, bytes.Length);
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public void Dispose()
    {
        _stream.Dispose();
        _handle.Dispose();
    }

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open(string path, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, byte[] arg);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(SafeFileHandle fd, Span<byte> buffer, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(SafeFileHandle fd, ReadOnlySpan<byte> buffer, nint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, nuint arg);
}
