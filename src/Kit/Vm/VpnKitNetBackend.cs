using Kit.HyperKit.Devices.Virtio.Net;
using Kit.VpnKit;
using Kit.VpnKit.Links;

namespace Kit.Cli.Vm;

/// <summary>
/// The in-process VPNKit backend of virtio-net: one object that is both HyperKit's <see cref="INetBackend"/> and
/// VPNKit's <see cref="ILink"/>, so neither part knows the other. Guest frames: the device gathers them from guest
/// memory into its transmit ring; VPNKit's link thread (blocked in <see cref="Receive"/>) copies each into its own
/// buffer, with no socket and no kernel in between. Host frames: VPNKit's Send goes straight to the device, which
/// writes them into guest receive buffers. With segmentation offload the virtio-net header carries what a TAP's
/// IFF_VNET_HDR would: partial checksums and 64 KiB TCPv4 segments both ways.
/// </summary>
internal sealed class VpnKitNetBackend : INetBackend, ILink
{
    private const int EthernetHeader = 14;
    private readonly VpnKitServer _server;
    private NetPort? _port;

    public VpnKitNetBackend(VpnKitServer server, bool offload)
    {
        _server = server;
        Info = new NetBackendInfo(offload, server.Mtu);
        MaxFrame = offload ? VirtioNetHeader.MaxFrame : server.Mtu + EthernetHeader;
    }

    public NetBackendInfo Info { get; }

    public string Name => "virtio-net";

    public int MaxFrame { get; }

    public bool LastFrameTrusted { get; private set; }

    /// <summary>Frames VPNKit handed over that were too large for its buffer.</summary>
    public long Oversized { get; private set; }

    public void Attach(NetPort port)
    {
        _port = port;
        _server.AddLink(this);
    }

    public int Receive(Span<byte> buffer)
    {
        FrameRing ring = _port!.Transmitted;
        while (ring.WaitPeek(out Span<byte> record))
        {
            VirtioNetHeader header = VirtioNetHeader.Read(record);
            Span<byte> frame = record[VirtioNetHeader.Size..];
            if (frame.Length > buffer.Length)
            {
                Oversized++;
                ring.Release();
                continue;
            }
            frame.CopyTo(buffer);
            // The guest kernel vouches for what it left partial (NEEDS_CSUM, TSO) or already checked (DATA_VALID).
            LastFrameTrusted = header.Flags != 0 || header.GsoType != VirtioNetHeader.GsoNone;
            ring.Release();
            return frame.Length;
        }
        return 0;
    }

    public void Send(ReadOnlySpan<byte> frame) => _port?.Deliver(frame);

    /// <summary>A TCPv4 frame with its pseudo-header checksum only, possibly larger than the MTU.</summary>
    public void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize)
    {
        if (_port is null)
        {
            return;
        }
        if (frame.Length < EthernetHeader + 20 + 20)
        {
            _port.Deliver(frame);
            return;
        }
        int tcpAt = EthernetHeader + (frame[EthernetHeader] & 0xF) * 4;
        if (tcpAt + 20 > frame.Length)
        {
            _port.Deliver(frame);
            return;
        }
        int headers = tcpAt + (frame[tcpAt + 12] >> 4) * 4;
        bool segment = segmentSize > 0 && frame.Length - headers > segmentSize;
        var header = new VirtioNetHeader
        {
            Flags = VirtioNetHeader.FlagNeedsCsum,
            GsoType = segment ? VirtioNetHeader.GsoTcpV4 : VirtioNetHeader.GsoNone,
            HdrLen = (ushort)headers,
            GsoSize = segment ? (ushort)segmentSize : (ushort)0,
            CsumStart = (ushort)tcpAt,
            CsumOffset = 16, // the TCP checksum field
        };
        _port.Deliver(header, frame);
    }

    public void Dispose()
    {
        // The device owns the rings; closing them (VirtioNet.Dispose) ends Receive, and VPNKit then drops this link.
    }
}
