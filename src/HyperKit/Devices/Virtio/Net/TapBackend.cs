using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>
/// A host TAP device as virtio-net backend (Documentation/networking/tuntap.rst): IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
/// with TUNSETVNETHDRSZ 12, so every read and write is exactly the device's own record, [virtio_net_hdr_v1][frame],
/// and TUNSETOFFLOAD(CSUM | TSO4) lets partial checksums and 64 KiB TCPv4 segments pass both ways untouched.
/// </summary>
public sealed partial class TapBackend : INetBackend
{
    private const uint TunSetIff = 0x400454ca;       // _IOW('T', 202, int)
    private const uint TunSetOffload = 0x400454d0;   // _IOW('T', 208, unsigned int)
    private const uint TunSetVnetHdrSz = 0x400454d8; // _IOW('T', 216, int)
    private const short IffTap = 0x0002, IffNoPi = 0x1000, IffVnetHdr = 0x4000;
    private const uint TunFCsum = 0x01, TunFTso4 = 0x02;
    private const int ORdWr = 2, OCloexec = 0x80000;

    private readonly SafeFileHandle _handle;
    private readonly FileStream _stream;
    private NetPort? _port;
    private Thread? _reader, _writer;

    private TapBackend(SafeFileHandle handle, string name, int mtu)
    {
        _handle = handle;
        _stream = new FileStream(handle, FileAccess.ReadWrite, bufferSize: 0);
        Name = name;
        Info = new NetBackendInfo(Offload: true, mtu);
    }

    public string Name { get; }

    public NetBackendInfo Info { get; }

    /// <summary>Creates (or attaches to) TAP <paramref name="name"/>; the caller configures its address and brings it up.</summary>
    public static TapBackend Open(string name, int mtu)
    {
        byte[] n = Encoding.ASCII.GetBytes(name);
        if (n.Length is 0 or > 15)
        {
            throw new ArgumentException($"bad interface name '{name}'");
        }
        int fd = open("/dev/net/tun", ORdWr | OCloexec);
        if (fd < 0)
        {
            throw new IOException($"cannot open /dev/net/tun: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        // struct ifreq: char ifr_name[16]; short ifr_flags; padded to 40 bytes.
        byte[] ifr = new byte[40];
        n.CopyTo(ifr, 0);
        BinaryPrimitives.WriteInt16LittleEndian(ifr.AsSpan(16), (short)(IffTap | IffNoPi | IffVnetHdr));
        int[] headerSize = [VirtioNetHeader.Size];
        if (ioctl(fd, TunSetIff, ifr) < 0 || ioctl(fd, TunSetVnetHdrSz, headerSize) < 0 || ioctl(fd, TunSetOffload, TunFCsum | TunFTso4) < 0)
        {
            string err = Marshal.GetLastPInvokeErrorMessage();
            handle.Dispose();
            throw new IOException($"TAP {name}: {err}");
        }
        int z = Array.IndexOf(ifr, (byte)0);
        return new TapBackend(handle, Encoding.ASCII.GetString(ifr, 0, z is >= 0 and < 16 ? z : 16), mtu);
    }

    public void Attach(NetPort port)
    {
        _port = port;
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = $"tap-rx {Name}" };
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = $"tap-tx {Name}" };
        _reader.Start();
        _writer.Start();
    }

    private void ReadLoop()
    {
        byte[] buffer = new byte[VirtioNetHeader.Size + VirtioNetHeader.MaxFrame];
        try
        {
            while (true)
            {
                int n = _stream.Read(buffer);
                if (n <= 0)
                {
                    break;
                }
                if (n > VirtioNetHeader.Size)
                {
                    _port!.Deliver(VirtioNetHeader.Read(buffer), buffer.AsSpan(VirtioNetHeader.Size, n - VirtioNetHeader.Size));
                }
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
        }
    }

    private void WriteLoop()
    {
        FrameRing ring = _port!.Transmitted;
        while (ring.WaitPeek(out Span<byte> record))
        {
            try
            {
                record[10] = record[11] = 0; // num_buffers means nothing on transmit
                _stream.Write(record);
            }
            catch (IOException)
            {
                // A downed interface or a full queue drops the frame, as a NIC would.
            }
            catch (ObjectDisposedException)
            {
                return;
            }
            ring.Release();
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
    private static partial int ioctl(int fd, nuint request, int[] arg);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int ioctl(int fd, nuint request, nuint arg);
}
