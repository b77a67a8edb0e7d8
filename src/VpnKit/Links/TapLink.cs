using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Kit.VpnKit.Links;

/// <summary>
/// A Linux TAP device (Documentation/networking/tuntap.rst): IFF_TAP | IFF_NO_PI, so each read or write is exactly
/// one Ethernet frame. The fd is wrapped in an unbuffered FileStream, so reads and writes are plain read(2)/write(2)
/// and only the TUNSETIFF ioctl needs P/Invoke.
/// </summary>
public sealed partial class TapLink : ILink
{
    private const uint TunSetIff = 0x400454ca;   // _IOW('T', 202, int)
    private const short IffTap = 0x0002;
    private const short IffNoPi = 0x1000;
    private const int ORdWr = 2;
    private const int OCloexec = 0x80000;

    private readonly FileStream _stream;
    private readonly SafeFileHandle _handle;

    private TapLink(SafeFileHandle handle, string name, int mtu)
    {
        _handle = handle;
        _stream = new FileStream(handle, FileAccess.ReadWrite, bufferSize: 0);
        Name = name;
        MaxFrame = mtu + 14;
    }

    public string Name { get; }
    public int MaxFrame { get; }

    /// <summary>Creates (or attaches to) the TAP device <paramref name="name"/> in the caller's network namespace.</summary>
    public static TapLink Open(string name, int mtu)
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
        BitConverter.TryWriteBytes(ifr.AsSpan(16), (short)(IffTap | IffNoPi));
        if (ioctl(fd, TunSetIff, ifr) < 0)
        {
            string err = Marshal.GetLastPInvokeErrorMessage();
            handle.Dispose();
            throw new IOException($"TUNSETIFF {name}: {err}");
        }
        string actual = Encoding.ASCII.GetString(ifr, 0, Array.IndexOf(ifr, (byte)0) is int z and >= 0 and < 16 ? z : 16);
        return new TapLink(handle, actual, mtu);
    }

    public int Receive(Span<byte> buffer)
    {
        try
        {
            return _stream.Read(buffer);
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

    public void Send(ReadOnlySpan<byte> frame)
    {
        try
        {
            _stream.Write(frame);
        }
        catch (IOException)
        {
            // A full TAP queue or a downed interface drops the frame, as a real NIC would; TCP retransmits.
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
}
