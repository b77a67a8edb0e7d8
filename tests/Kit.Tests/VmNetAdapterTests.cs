using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.Cli.Vm;
using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Memory;
using Kit.VpnKit;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.Tests;

/// <summary>
/// The in-process VPNKit backend end to end without KVM: a scripted driver on fake guest memory sends frames through
/// virtio-net's transmit queue to a real VPNKit server, and VPNKit's answers come back through the receive queue.
/// A TCP SYN to 192.168.65.2 makes VPNKit connect to a listener on 127.0.0.1 and answer with a SYN-ACK that it sends
/// with an offloaded (partial) checksum; the device finishes it for a driver without GUEST_CSUM.
/// </summary>
public sealed class VmNetAdapterTests : IDisposable
{
    private const ulong RxDesc = 0x1000, RxAvail = 0x2000, RxUsed = 0x3000, TxDesc = 0x5000, TxAvail = 0x6000, TxUsed = 0x7000;
    private const ulong RxBuffers = 0x10000, TxBuffers = 0x40000;
    private const ushort QueueSize = 16;
    private static readonly byte[] GuestMac = [0x02, 0x6b, 0x69, 0x74, 0x00, 0x09];
    private static readonly byte[] GuestIp = [192, 168, 65, 3], HostAlias = [192, 168, 65, 2];
    private readonly GuestMemory _memory = new(1 << 20);
    private ushort _rxAvail, _txAvail, _seen;

    public void Dispose() => _memory.Dispose();

    private sealed class NoMsi : IMsiSink
    {
        public void Signal(ulong address, uint data)
        {
        }
    }

    /// <summary>The transport as a driver leaves it: VERSION_1 and MRG_RXBUF accepted (no GUEST_CSUM), queues live.</summary>
    private VirtioPciDevice Bring(VirtioNet net)
    {
        var pci = new VirtioPciDevice(net, _memory, new NoMsi(), 0xD000_0000);
        void Write(ulong offset, uint value, int size)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, value);
            pci.BarWrite(0, offset, b[..size]);
        }
        Write(20, VirtioStatus.Acknowledge | VirtioStatus.Driver, 1);
        Write(8, 0, 4);
        Write(12, (uint)VirtioNet.FeatureMrgRxbuf | (uint)VirtioNet.FeatureMac, 4);
        Write(8, 1, 4);
        Write(12, 1, 4); // VERSION_1 (bit 32)
        Write(20, VirtioStatus.Acknowledge | VirtioStatus.Driver | VirtioStatus.FeaturesOk, 1);
        (ulong Desc, ulong Avail, ulong Used)[] rings = [(RxDesc, RxAvail, RxUsed), (TxDesc, TxAvail, TxUsed)];
        for (int q = 0; q < 2; q++)
        {
            SplitQueue queue = pci.Queue(q);
            queue.Size = QueueSize;
            queue.DescTable = rings[q].Desc;
            queue.AvailRing = rings[q].Avail;
            queue.UsedRing = rings[q].Used;
            queue.Enabled = true;
        }
        Write(20, VirtioStatus.Acknowledge | VirtioStatus.Driver | VirtioStatus.FeaturesOk | VirtioStatus.DriverOk, 1);
        Assert.Equal(VirtioNet.FeatureMrgRxbuf | VirtioNet.FeatureMac | VirtioFeatures.Version1, net.DriverFeatures);
        return pci;
    }

    private void Post(ulong desc, ulong avail, ref ushort availIdx, ulong addr, uint len, bool write)
    {
        ushort index = (ushort)(availIdx % QueueSize);
        ulong e = desc + 16UL * index;
        _memory.TryWriteU64(e, addr);
        _memory.TryWriteU32(e + 8, len);
        _memory.TryWriteU16(e + 12, write ? (ushort)2 : (ushort)0);
        _memory.TryWriteU16(e + 14, 0);
        _memory.TryWriteU16(avail + 4 + 2UL * index, index);
        availIdx++;
        _memory.TryWriteU16(avail + 2, availIdx);
    }

    [Fact]
    public void A_guest_syn_to_the_host_alias_reaches_a_loopback_listener_and_the_syn_ack_comes_back_checksummed()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        using var server = new VpnKitServer(new VpnKitServerOptions
        {
            DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)],
            SegmentationOffload = TcpOffload.Ipv4,
        }, NullLoggerFactory.Instance);
        server.Start();
        var backend = new VpnKitNetBackend(server, offload: true);
        var net = new VirtioNet(backend, GuestMac);
        VirtioPciDevice pci = Bring(net);
        lock (pci)
        {
            for (int i = 0; i < QueueSize; i++)
            {
                Post(RxDesc, RxAvail, ref _rxAvail, RxBuffers + (ulong)i * 0x2000, 0x2000, true);
            }
        }
        pci.Notify(0);

        // ARP who-has 192.168.65.1: learn the gateway's MAC.
        byte[] arp = new byte[42];
        arp.AsSpan(0, 6).Fill(0xFF);
        GuestMac.CopyTo(arp, 6);
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(12), 0x0806);
        ((byte[])[0, 1, 8, 0, 6, 4, 0, 1]).CopyTo(arp, 14);
        GuestMac.CopyTo(arp, 22);
        GuestIp.CopyTo(arp, 28);
        ((byte[])[192, 168, 65, 1]).CopyTo(arp, 38);
        Transmit(pci, arp, 0);
        byte[] arpReply = WaitFor(pci, f => f[12] == 0x08 && f[13] == 0x06 && f[21] == 2);
        byte[] gatewayMac = arpReply.AsSpan(22, 6).ToArray();

        // TCP SYN 192.168.65.3:40000 -> 192.168.65.2:port with an MSS option (RFC 9293 3.1).
        byte[] syn = new byte[14 + 20 + 24];
        gatewayMac.CopyTo(syn, 0);
        GuestMac.CopyTo(syn, 6);
        BinaryPrimitives.WriteUInt16BigEndian(syn.AsSpan(12), 0x0800);
        Span<byte> ip = syn.AsSpan(14, 20);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], 44);
        ip[8] = 64;
        ip[9] = 6;
        GuestIp.CopyTo(ip[12..]);
        HostAlias.CopyTo(ip[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], (ushort)~NetChecksum.Fold(NetChecksum.Sum(ip)));
        Span<byte> tcp = syn.AsSpan(34);
        BinaryPrimitives.WriteUInt16BigEndian(tcp, 40000);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[2..], (ushort)port);
        BinaryPrimitives.WriteUInt32BigEndian(tcp[4..], 1000);
        tcp[12] = 6 << 4;
        tcp[13] = 0x02; // SYN
        BinaryPrimitives.WriteUInt16BigEndian(tcp[14..], 65535);
        ((byte[])[2, 4, 0x05, 0xB4]).CopyTo(tcp[20..]);
        BinaryPrimitives.WriteUInt16BigEndian(tcp[16..], (ushort)~NetChecksum.Fold(NetChecksum.Sum(tcp, PseudoHeader(GuestIp, HostAlias, tcp.Length))));
        Transmit(pci, syn, 1);

        using Socket accepted = listener.AcceptSocket();
        byte[] synAck = WaitFor(pci, f => f[12] == 0x08 && f[13] == 0x00 && f[23] == 6 && (f[34 + 13] & 0x12) == 0x12);
        Span<byte> reply = synAck.AsSpan(34, BinaryPrimitives.ReadUInt16BigEndian(synAck.AsSpan(16)) - 20);
        Assert.Equal(40000, BinaryPrimitives.ReadUInt16BigEndian(reply[2..]));
        Assert.Equal(1001u, BinaryPrimitives.ReadUInt32BigEndian(reply[8..]));
        // VPNKit left the checksum partial; the device finished it: the full sum with the pseudo-header is all ones.
        Assert.Equal(0xFFFF, NetChecksum.Fold(NetChecksum.Sum(reply, PseudoHeader(HostAlias, GuestIp, reply.Length))));
        Assert.Equal(0, net.TxDropped);
        net.Dispose();
    }

    private static ulong PseudoHeader(byte[] src, byte[] dst, int length) =>
        NetChecksum.Sum(src) + NetChecksum.Sum(dst) + 6 + (ulong)length;

    private void Transmit(VirtioPciDevice pci, byte[] frame, int slot)
    {
        ulong at = TxBuffers + (ulong)slot * 0x1000;
        lock (pci)
        {
            _memory.GetSpan(at, VirtioNetHeader.Size).Clear();
            frame.CopyTo(_memory.GetSpan(at + VirtioNetHeader.Size, frame.Length));
            Post(TxDesc, TxAvail, ref _txAvail, at, (uint)(VirtioNetHeader.Size + frame.Length), false);
        }
        pci.Notify(1);
    }

    /// <summary>Polls the used ring like a driver with interrupts off, reposting each buffer it consumes.</summary>
    private byte[] WaitFor(VirtioPciDevice pci, Func<byte[], bool> match)
    {
        DateTime deadline = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            bool posted = false;
            lock (pci)
            {
                _memory.TryReadU16(RxUsed + 2, out ushort usedIdx);
                while (_seen != usedIdx)
                {
                    ulong slot = RxUsed + 4 + 8UL * (ulong)(_seen++ % QueueSize);
                    _memory.TryReadU32(slot, out uint id);
                    _memory.TryReadU32(slot + 4, out uint len);
                    byte[] frame = _memory.GetSpan(RxBuffers + id * 0x2000UL + VirtioNetHeader.Size, (int)len - VirtioNetHeader.Size).ToArray();
                    Post(RxDesc, RxAvail, ref _rxAvail, RxBuffers + id * 0x2000UL, 0x2000, true);
                    posted = true;
                    if (frame.Length >= 42 && match(frame))
                    {
                        pci.Notify(0);
                        return frame;
                    }
                }
            }
            if (posted)
            {
                pci.Notify(0);
            }
            Thread.Sleep(20);
        }
        Assert.Fail("no matching frame from VPNKit within 10 s");
        return [];
    }
}
