using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.Testing;
using PacketDotNet;
using ProtocolType = System.Net.Sockets.ProtocolType;

namespace Kit.EndToEnd.Tests.NetGuest;

/// <summary>
/// A client that speaks hyperkit's virtio-vpnkit protocol to `kit net serve --vmnet`, byte for byte as
/// pci_virtio_net_vpnkit.c does (reference/vpnkit.md §2.2.1): 49-byte Init each way, a 41-byte command, a 258-byte
/// VIF response, then Ethernet frames behind a 2-byte little-endian length. The frames it sends are hand-built;
/// the replies are checked with PacketDotNet (an independent parser, checksums included).
/// </summary>
[Trait("Tier", "Real")]
public sealed partial class Vmn3tClientTests(ITestOutputHelper output) : IDisposable
{
    private const string Uuid = "d4a1f3c2-5b6e-4f70-8a9b-0c1d2e3f4a5b";
    private static readonly IPAddress s_gateway = IPAddress.Parse("192.168.65.1");
    private static readonly IPAddress s_firstGuest = IPAddress.Parse("192.168.65.3");

    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-vmn3t-");
    private readonly TinyDnsServer _dns = new();

    private string SocketPath => Path.Combine(_dir.FullName, "vpnkit.sock");

    [Fact]
    public async Task Handshake_is_byte_exact_and_the_uuid_keeps_its_mac()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);

        (byte[] serverInit, byte[] vif, Socket first) = await HandshakeAsync(Uuid, cancel);
        using (first)
        {
            output.WriteLine($"server init: {Convert.ToHexString(serverInit)}");
            output.WriteLine($"VIF response: {Convert.ToHexString(vif, 0, 11)} + {vif.Length - 11} bytes");
            // Init: "VMN3T", version 22 LE, vpnkit's 40-byte commit placeholder.
            Assert.Equal("564D4E3354" + "16000000" + Convert.ToHexString("0123456789012345678901234567890123456789"u8), Convert.ToHexString(serverInit));
            // VIF: type 1, MTU 1500 LE (DC 05), max packet size MTU + 50 LE (0E 06), the client MAC, zero padding.
            Assert.Equal(258, vif.Length);
            Assert.Equal("01DC050E06", Convert.ToHexString(vif, 0, 5));
            byte[] mac = vif[5..11];
            Assert.Equal(0, mac[0] & 1); // unicast
            Assert.NotEqual(new byte[6], mac);
            Assert.All(vif[11..], b => Assert.Equal(0, b));

            // The same UUID again (a VM reconnecting) gets the same MAC, so it keeps its DHCP lease; another UUID does not.
            (_, byte[] again, Socket second) = await HandshakeAsync(Uuid, cancel);
            second.Dispose();
            (_, byte[] other, Socket third) = await HandshakeAsync("0f0e0d0c-0b0a-4908-8706-050403020100", cancel);
            third.Dispose();
            Assert.Equal(Convert.ToHexString(mac), Convert.ToHexString(again, 5, 6));
            Assert.NotEqual(Convert.ToHexString(mac), Convert.ToHexString(other, 5, 6));
        }
        Assert.False(kit.HasExited, kit.Output);
    }

    [Fact]
    public async Task An_unsupported_version_gets_the_server_init_then_the_connection_closes()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);
        using Socket s = await ConnectAsync(cancel);
        await s.SendAsync(Init(version: 21), cancel);
        byte[] init = new byte[49];
        await ReadExactlyAsync(s, init, cancel);
        Assert.Equal("VMN3T", Encoding.ASCII.GetString(init, 0, 5));
        Assert.Equal(22u, BinaryPrimitives.ReadUInt32LittleEndian(init.AsSpan(5)));
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(TimeSpan.FromSeconds(10));
        Assert.Equal(0, await s.ReceiveAsync(new byte[64], deadline.Token)); // EOF, not a VIF response
        Assert.False(kit.HasExited, kit.Output);
    }

    [Fact]
    public async Task Dhcp_discover_gets_an_offer_and_arp_for_the_gateway_is_answered()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);
        (_, byte[] vif, Socket s) = await HandshakeAsync(Uuid, cancel);
        using (s)
        {
            byte[] mac = vif[5..11];
            const uint xid = 0x4b17a5e1;

            (byte[] bootp, Dictionary<byte, byte[]> options) = await DiscoverAsync(s, mac, xid, cancel);
            Assert.Equal(s_firstGuest, new IPAddress(bootp[16..20])); // yiaddr
            output.WriteLine("offer options: " + string.Join(", ", options.Select(o => $"{o.Key}={Convert.ToHexString(o.Value)}")));
            Assert.Equal([2], options[53]); // DHCPOFFER (RFC 2132 §9.6)
            Assert.Equal(s_gateway, new IPAddress(options[54])); // server identifier
            Assert.Equal(IPAddress.Parse("255.255.255.0"), new IPAddress(options[1]));
            Assert.Equal(s_gateway, new IPAddress(options[3][..4])); // router
            Assert.Equal(s_gateway, new IPAddress(options[6][..4])); // DNS
            Assert.Equal("05DC", Convert.ToHexString(options[26])); // interface MTU 1500

            // ARP who-has 192.168.65.1 tell 192.168.65.3 (RFC 826).
            await SendFrameAsync(s, ArpRequest(mac, s_firstGuest, s_gateway), cancel);
            EthernetPacket arpEth = await ReceiveAsync(s, f => f.Extract<ArpPacket>() is { Operation: ArpOperation.Response }, cancel);
            ArpPacket arp = arpEth.Extract<ArpPacket>();
            output.WriteLine($"ARP reply: {arp.SenderProtocolAddress} is at {arp.SenderHardwareAddress}, to {arp.TargetProtocolAddress} {arp.TargetHardwareAddress}");
            Assert.Equal(s_gateway, arp.SenderProtocolAddress);
            Assert.Equal(s_firstGuest, arp.TargetProtocolAddress);
            Assert.Equal(mac, arp.TargetHardwareAddress.GetAddressBytes());
            Assert.Equal(mac, arpEth.DestinationHardwareAddress.GetAddressBytes());
            Assert.Equal(arpEth.SourceHardwareAddress, arp.SenderHardwareAddress);
            Assert.NotEqual(mac, arp.SenderHardwareAddress.GetAddressBytes());
            Assert.Equal(0, arp.SenderHardwareAddress.GetAddressBytes()[0] & 1);
        }
        Assert.False(kit.HasExited, kit.Output);
    }

    [Fact]
    public async Task Leases_are_per_client_and_stable_across_reconnects()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);
        const string other = "0f0e0d0c-0b0a-4908-8706-050403020100";
        var leases = new List<string>();
        foreach ((string uuid, uint xid) in new[] { (Uuid, 1u), (other, 2u), (Uuid, 3u) })
        {
            (_, byte[] vif, Socket s) = await HandshakeAsync(uuid, cancel);
            using (s)
            {
                (byte[] bootp, _) = await DiscoverAsync(s, vif[5..11], xid, cancel);
                leases.Add(new IPAddress(bootp[16..20]).ToString());
            }
        }
        output.WriteLine(string.Join(", ", leases));
        Assert.Equal("192.168.65.3", leases[0]);
        Assert.NotEqual(leases[0], leases[1]);
        Assert.StartsWith("192.168.65.", leases[1], StringComparison.Ordinal);
        Assert.Equal(leases[0], leases[2]); // the reconnecting VM keeps its address
    }

    [Fact]
    public async Task Mtu_option_reaches_the_vif_response_and_the_dhcp_offer()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath, "--mtu", "9000"], _dns, pcap: null, cancel);
        (_, byte[] vif, Socket s) = await HandshakeAsync(Uuid, cancel);
        using (s)
        {
            Assert.Equal("01" + "2823" + "5A23", Convert.ToHexString(vif, 0, 5)); // MTU 9000, max packet 9050 (LE)
            (_, Dictionary<byte, byte[]> options) = await DiscoverAsync(s, vif[5..11], 7, cancel);
            Assert.Equal("2328", Convert.ToHexString(options[26])); // RFC 2132 §5.1 interface MTU, big-endian
        }
    }

    [Fact]
    public async Task Runt_and_garbage_frames_are_dropped_and_the_link_keeps_working()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);
        (_, byte[] vif, Socket s) = await HandshakeAsync(Uuid, cancel);
        using (s)
        {
            byte[] mac = vif[5..11];
            // A zero-length frame, a 5-byte runt, a header-only frame, and an IPv4 frame with a truncated header.
            await SendFrameAsync(s, [], cancel);
            await SendFrameAsync(s, [1, 2, 3, 4, 5], cancel);
            await SendFrameAsync(s, [.. new byte[6], .. mac, 0x08, 0x00], cancel);
            await SendFrameAsync(s, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, .. mac, 0x08, 0x00, 0x4f, 0x00, 0xff], cancel);
            var random = new Random(3);
            byte[] junk = new byte[1200];
            random.NextBytes(junk);
            await SendFrameAsync(s, junk, cancel);

            await SendFrameAsync(s, ArpRequest(mac, s_firstGuest, s_gateway), cancel);
            EthernetPacket reply = await ReceiveAsync(s, f => f.Extract<ArpPacket>() is { Operation: ArpOperation.Response }, cancel);
            Assert.Equal(s_gateway, reply.Extract<ArpPacket>().SenderProtocolAddress);
        }
        Assert.False(kit.HasExited, kit.Output);
    }

    private async Task<Socket> ConnectAsync(CancellationToken cancel)
    {
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), cancel);
        return s;
    }

    /// <summary>Init (49 bytes): "VMN3T", version LE, a 40-byte ASCII commit, as hyperkit sends it.</summary>
    private static byte[] Init(uint version = 22)
    {
        byte[] b = new byte[49];
        "VMN3T"u8.CopyTo(b);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(5), version);
        "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"u8.CopyTo(b.AsSpan(9));
        return b;
    }

    /// <summary>
    /// Init both ways, then the 41-byte command and the 258-byte response: command 1 (Ethernet) with the UUID, or
    /// command 8 (Preferred_ipv4) whose address hyperkit writes as the uint32 LE of its numeric value (bytes reversed).
    /// </summary>
    private async Task<(byte[] ServerInit, byte[] Vif, Socket Socket)> HandshakeAsync(string uuid, CancellationToken cancel, IPAddress? preferred = null)
    {
        Socket s = await ConnectAsync(cancel);
        try
        {
            await s.SendAsync(Init(), cancel);
            byte[] init = new byte[49];
            await ReadExactlyAsync(s, init, cancel);
            byte[] command = new byte[41];
            command[0] = preferred is null ? (byte)1 : (byte)8;
            Encoding.ASCII.GetBytes(uuid).CopyTo(command, 1);
            if (preferred is not null)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(command.AsSpan(37), BinaryPrimitives.ReadUInt32BigEndian(preferred.GetAddressBytes()));
            }
            await s.SendAsync(command, cancel);
            byte[] vif = new byte[258];
            await ReadExactlyAsync(s, vif, cancel);
            return (init, vif, s);
        }
        catch
        {
            s.Dispose();
            throw;
        }
    }

    private static async Task ReadExactlyAsync(Socket s, Memory<byte> buffer, CancellationToken cancel)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(TimeSpan.FromSeconds(15));
        while (buffer.Length > 0)
        {
            int n = await s.ReceiveAsync(buffer, deadline.Token);
            if (n == 0)
            {
                throw new EndOfStreamException($"the server closed the connection with {buffer.Length} bytes still expected");
            }
            buffer = buffer[n..];
        }
    }

    private static async Task SendFrameAsync(Socket s, byte[] frame, CancellationToken cancel)
    {
        byte[] wire = new byte[2 + frame.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(wire, (ushort)frame.Length);
        frame.CopyTo(wire, 2);
        await s.SendAsync(wire, cancel);
    }

    /// <summary>
    /// Sends a DHCPDISCOVER and returns the matching offer's BOOTP payload and options, after checking what every
    /// offer must satisfy: valid IPv4 and UDP checksums, from the gateway, BOOTREPLY to our chaddr, magic cookie.
    /// </summary>
    private static async Task<(byte[] Bootp, Dictionary<byte, byte[]> Options)> DiscoverAsync(Socket s, byte[] mac, uint xid, CancellationToken cancel)
    {
        await SendFrameAsync(s, DhcpDiscover(mac, xid), cancel);
        EthernetPacket offerEth = await ReceiveAsync(s, f => f.Extract<UdpPacket>() is { SourcePort: 67, DestinationPort: 68 } u
            && Payload(u) is { Length: >= 240 } p && BinaryPrimitives.ReadUInt32BigEndian(p.AsSpan(4)) == xid, cancel);
        UdpPacket offerUdp = offerEth.Extract<UdpPacket>();
        var offerIp = (IPv4Packet)offerUdp.ParentPacket;
        Assert.True(offerIp.ValidIPChecksum, "bad IPv4 header checksum on the offer");
        Assert.True(offerUdp.Checksum == 0 || offerUdp.ValidUdpChecksum, "bad UDP checksum on the offer");
        Assert.Equal(s_gateway, offerIp.SourceAddress);
        Assert.True(offerEth.DestinationHardwareAddress.ToString() is "FFFFFFFFFFFF" || offerEth.DestinationHardwareAddress.GetAddressBytes().SequenceEqual(mac));
        byte[] bootp = Payload(offerUdp);
        Assert.Equal(2, bootp[0]); // BOOTREPLY
        Assert.Equal(mac, bootp[28..34]); // chaddr
        Assert.Equal("63825363", Convert.ToHexString(bootp, 236, 4)); // RFC 2131 §3 magic cookie
        Dictionary<byte, byte[]> options = DhcpOptions(bootp.AsSpan(240));
        Assert.Equal([2], options[53]); // DHCPOFFER (RFC 2132 §9.6)
        return (bootp, options);
    }

    /// <summary>Reads 2-byte LE framed frames until one matches (at most 50 frames, 15 s each).</summary>
    private static async Task<EthernetPacket> ReceiveAsync(Socket s, Func<EthernetPacket, bool> match, CancellationToken cancel)
    {
        var seen = new List<string>();
        for (int i = 0; i < 50; i++)
        {
            byte[] length = new byte[2];
            await ReadExactlyAsync(s, length, cancel);
            int size = BinaryPrimitives.ReadUInt16LittleEndian(length);
            Assert.InRange(size, 14, 65535); // the 2-byte length bounds it
            byte[] frame = new byte[size];
            await ReadExactlyAsync(s, frame, cancel);
            var eth = (EthernetPacket)Packet.ParsePacket(LinkLayers.Ethernet, frame);
            if (match(eth))
            {
                return eth;
            }
            seen.Add(eth.ToString());
        }
        throw new InvalidOperationException("no matching frame among 50:\n" + string.Join('\n', seen));
    }

    /// <summary>A DHCPDISCOVER (RFC 2131 §4.4.1) from 0.0.0.0:68 to 255.255.255.255:67, broadcast flag set.</summary>
    private static byte[] DhcpDiscover(byte[] mac, uint xid)
    {
        byte[] bootp = new byte[300];
        bootp[0] = 1; // BOOTREQUEST
        bootp[1] = 1; // Ethernet
        bootp[2] = 6;
        BinaryPrimitives.WriteUInt32BigEndian(bootp.AsSpan(4), xid);
        BinaryPrimitives.WriteUInt16BigEndian(bootp.AsSpan(10), 0x8000);
        mac.CopyTo(bootp, 28);
        byte[] options = [0x63, 0x82, 0x53, 0x63, 53, 1, 1, 55, 4, 1, 3, 6, 15, 61, 7, 1, .. mac, 255];
        options.CopyTo(bootp, 236);
        return Ipv4Udp(mac, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], IPAddress.Any, IPAddress.Broadcast, 68, 67, bootp);
    }

    private static byte[] Ipv4Udp(byte[] srcMac, byte[] dstMac, IPAddress src, IPAddress dst, ushort srcPort, ushort dstPort, byte[] payload)
    {
        byte[] f = new byte[14 + 20 + 8 + payload.Length];
        dstMac.CopyTo(f, 0);
        srcMac.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0800);
        Span<byte> ip = f.AsSpan(14, 20);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(20 + 8 + payload.Length));
        ip[8] = 64;
        ip[9] = 17;
        src.GetAddressBytes().CopyTo(ip[12..]);
        dst.GetAddressBytes().CopyTo(ip[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], InternetChecksum(ip));
        Span<byte> udp = f.AsSpan(34);
        BinaryPrimitives.WriteUInt16BigEndian(udp, srcPort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[2..], dstPort);
        BinaryPrimitives.WriteUInt16BigEndian(udp[4..], (ushort)(8 + payload.Length));
        payload.CopyTo(udp[8..]); // UDP checksum 0: none (RFC 768), as udhcpc's raw socket path may send
        return f;
    }

    private static ushort InternetChecksum(ReadOnlySpan<byte> b)
    {
        uint sum = 0;
        for (int i = 0; i + 1 < b.Length; i += 2)
        {
            sum += BinaryPrimitives.ReadUInt16BigEndian(b[i..]);
        }
        while (sum > 0xffff)
        {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        return (ushort)~sum;
    }

    /// <summary>An ARP request (RFC 826) for <paramref name="target"/>, broadcast.</summary>
    private static byte[] ArpRequest(byte[] mac, IPAddress sender, IPAddress target)
    {
        byte[] f = new byte[14 + 28];
        f.AsSpan(0, 6).Fill(0xff);
        mac.CopyTo(f, 6);
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0806);
        Span<byte> a = f.AsSpan(14);
        BinaryPrimitives.WriteUInt16BigEndian(a, 1);
        BinaryPrimitives.WriteUInt16BigEndian(a[2..], 0x0800);
        a[4] = 6;
        a[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(a[6..], 1);
        mac.CopyTo(a[8..]);
        sender.GetAddressBytes().CopyTo(a[14..]);
        target.GetAddressBytes().CopyTo(a[24..]);
        return f;
    }

    /// <summary>The UDP payload (PacketDotNet parses port 67/68 payloads into a DhcpV4Packet, leaving PayloadData null).</summary>
    private static byte[] Payload(UdpPacket u) => u.PayloadData ?? u.PayloadPacket?.Bytes ?? [];

    /// <summary>Options after the magic cookie: code, length, value; pad 0 and end 255 (RFC 2132 §2).</summary>
    private static Dictionary<byte, byte[]> DhcpOptions(ReadOnlySpan<byte> o)
    {
        var d = new Dictionary<byte, byte[]>();
        int i = 0;
        while (i < o.Length && o[i] != 255)
        {
            if (o[i] == 0)
            {
                i++;
                continue;
            }
            if (i + 1 >= o.Length || i + 2 + o[i + 1] > o.Length)
            {
                break;
            }
            d[o[i]] = o.Slice(i + 2, o[i + 1]).ToArray();
            i += 2 + o[i + 1];
        }
        return d;
    }

    public void Dispose()
    {
        _dns.Dispose();
        _dir.Delete(recursive: true);
    }
}
