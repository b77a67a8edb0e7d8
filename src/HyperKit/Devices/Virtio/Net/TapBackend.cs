using Kit.Linux;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>
/// A host TAP device as virtio-net backend (Documentation/networking/tuntap.rst): IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
/// with TUNSETVNETHDRSZ 12, so every read and write is exactly the device's own record, [virtio_net_hdr_v1][frame],
/// and TUNSETOFFLOAD(CSUM | TSO4) lets partial checksums and 64 KiB TCPv4 segments pass both ways untouched
/// (the device is opened by <see cref="Tap.Open"/>, shared with VPNKit's TAP link).
/// </summary>
public sealed class TapBackend : INetBackend
{
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
        if (name.Length == 0)
        {
            throw new ArgumentException($"bad interface name '{name}'");
        }
        SafeFileHandle handle = Tap.Open(name, VirtioNetHeader.Size, out string actual);
        return new TapBackend(handle, actual, mtu);
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
}
