using System.Buffers.Binary;
using System.Net.Sockets;
using Kit.VpnKit.Links;
using Kit.VpnKit.Tests.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Links;

/// <summary>The guest-facing framings, driven over real Unix sockets against a running server.</summary>
public sealed class LinkTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-links-").FullName;
    private readonly VpnKitServer _server = new(new VpnKitServerOptions { DnsUpstreams = [new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 9)] }, NullLoggerFactory.Instance);

    public LinkTests() => _server.Start();

    public void Dispose()
    {
        _server.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private static Socket Connect(string path, SocketType type = SocketType.Stream)
    {
        var s = new Socket(AddressFamily.Unix, type, ProtocolType.Unspecified) { ReceiveTimeout = 10_000 };
        for (int i = 0; ; i++)
        {
            try
            {
                s.Connect(new UnixDomainSocketEndPoint(path));
                return s;
            }
            catch (SocketException) when (i < 100)
            {
                Thread.Sleep(20);
            }
        }
    }

    private static byte[] ReadExactly(Socket s, int n)
    {
        byte[] b = new byte[n];
        int got = 0;
        while (got < n)
        {
            int r = s.Receive(b, got, n - got, SocketFlags.None);
            Assert.True(r > 0, "peer closed");
            got += r;
        }
        return b;
    }

    private static void AssertArpReplyForGateway(ReadOnlySpan<byte> frame)
    {
        Assert.True(EthernetFrame.TryParse(frame, out EthernetFrame e));
        Assert.Equal(EtherType.Arp, e.EtherType);
        Assert.True(ArpPacket.TryParse(e.Payload, out ArpPacket a));
        Assert.Equal(ArpPacket.OpReply, a.Operation);
        Assert.Equal(G.Gateway, a.SenderIp);
    }

    [Fact]
    public void QemuStreamUsesFourByteBigEndianLengths()
    {
        string path = Path.Combine(_dir, "qemu.sock");
        _server.ListenQemu(path);
        using Socket s = Connect(path);
        byte[] arp = G.ArpRequest(G.Gateway);
        byte[] msg = new byte[4 + arp.Length];
        BinaryPrimitives.WriteUInt32BigEndian(msg, (uint)arp.Length);
        arp.CopyTo(msg, 4);
        s.Send(msg);
        int len = (int)BinaryPrimitives.ReadUInt32BigEndian(ReadExactly(s, 4));
        Assert.Equal(42, len);
        AssertArpReplyForGateway(ReadExactly(s, len));
    }

    [Fact]
    public void QemuDgramCarriesOneFramePerDatagram()
    {
        string path = Path.Combine(_dir, "dgram.sock");
        string mine = Path.Combine(_dir, "qemu-side.sock");
        _server.ListenDgram(path);
        using var s = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified) { ReceiveTimeout = 10_000 };
        s.Bind(new UnixDomainSocketEndPoint(mine));
        s.SendTo(G.ArpRequest(G.Gateway), new UnixDomainSocketEndPoint(path));
        byte[] buf = new byte[2000];
        int n = s.Receive(buf);
        AssertArpReplyForGateway(buf.AsSpan(0, n));
    }

    [Fact]
    public void Vmn3tHandshakeIsByteExactThenTwoByteLittleEndianFrames()
    {
        string path = Path.Combine(_dir, "vmnet.sock");
        _server.ListenVmnet(path);
        using Socket s = Connect(path);
        // Client Init: "VMN3T", version 22 LE, 40-byte commit (hyperkit sends its git SHA).
        byte[] init = new byte[49];
        "VMN3T"u8.CopyTo(init);
        BinaryPrimitives.WriteUInt32LittleEndian(init.AsSpan(5), 22);
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"u8.CopyTo(init.AsSpan(9));
        s.Send(init);
        byte[] serverInit = ReadExactly(s, 49);
        Assert.Equal(Convert.FromHexString("564D4E335416000000"), serverInit.AsSpan(0, 9).ToArray());
        Assert.Equal("0123456789012345678901234567890123456789"u8.ToArray(), serverInit.AsSpan(9).ToArray());
        // Command 8 (preferred IPv4) with a UUID and 192.168.65.3 as a LE uint32 (bytes reversed on the wire).
        byte[] cmd = new byte[41];
        cmd[0] = 8;
        "c3d68012-0208-11ea-9fd7-f2189899ab08"u8.CopyTo(cmd.AsSpan(1));
        new byte[] { 0x03, 0x41, 0xA8, 0xC0 }.CopyTo(cmd, 37);
        s.Send(cmd);
        byte[] vif = ReadExactly(s, 258);
        Assert.Equal(1, vif[0]);
        Assert.Equal(1500, BinaryPrimitives.ReadUInt16LittleEndian(vif.AsSpan(1)));
        Assert.Equal(1550, BinaryPrimitives.ReadUInt16LittleEndian(vif.AsSpan(3)));
        byte[] mac = vif.AsSpan(5, 6).ToArray();
        Assert.Equal(2, mac[0] & 0x03); // Locally administered unicast.
        Assert.All(vif.AsSpan(11).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(Vmn3t.MacFor("c3d68012-0208-11ea-9fd7-f2189899ab08"u8), mac); // Same UUID, same MAC.

        byte[] arp = G.ArpRequest(G.Gateway);
        byte[] msg = new byte[2 + arp.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(msg, (ushort)arp.Length);
        arp.CopyTo(msg, 2);
        s.Send(msg);
        int len = BinaryPrimitives.ReadUInt16LittleEndian(ReadExactly(s, 2));
        AssertArpReplyForGateway(ReadExactly(s, len));
    }

    /// <summary>Init both ways, then command 8 with <paramref name="preferred"/> (bytes as on the wire); the 258-byte response.</summary>
    private static (Socket Socket, byte[] Response) Vmn3tPreferred(string path, string uuid, byte[] preferred)
    {
        Socket s = Connect(path);
        byte[] init = new byte[49];
        "VMN3T"u8.CopyTo(init);
        BinaryPrimitives.WriteUInt32LittleEndian(init.AsSpan(5), 22);
        s.Send(init);
        ReadExactly(s, 49);
        byte[] cmd = new byte[41];
        cmd[0] = 8;
        System.Text.Encoding.ASCII.GetBytes(uuid).CopyTo(cmd, 1);
        preferred.CopyTo(cmd, 37);
        s.Send(cmd);
        return (s, ReadExactly(s, 258));
    }

    [Fact]
    public void Vmn3tPreferredIpOutOfRangeOrTakenGetsVpnkitsDisconnect()
    {
        string path = Path.Combine(_dir, "vmnet3.sock");
        _server.ListenVmnet(path);
        // 10.0.0.5 reversed: 05 00 00 0A. Disconnect: type 2, reason length, ASCII reason, zero padding; then EOF.
        (Socket s1, byte[] r1) = Vmn3tPreferred(path, "11111111-2222-4333-8444-555555555555", [0x05, 0x00, 0x00, 0x0A]);
        using (s1)
        {
            byte[] reason = "Preferred IP address out of range."u8.ToArray();
            Assert.Equal([2, (byte)reason.Length, .. reason], r1[..(2 + reason.Length)]);
            Assert.All(r1[(2 + reason.Length)..], b => Assert.Equal(0, b));
            Assert.Equal(0, s1.Receive(new byte[1]));
        }
        // 192.168.65.20 (14 41 A8 C0) goes to the first client; a second UUID asking for it is refused.
        (Socket s2, byte[] r2) = Vmn3tPreferred(path, "11111111-2222-4333-8444-555555555555", [0x14, 0x41, 0xA8, 0xC0]);
        using (s2)
        {
            Assert.Equal(1, r2[0]);
            (Socket s3, byte[] r3) = Vmn3tPreferred(path, "66666666-7777-4888-8999-000000000000", [0x14, 0x41, 0xA8, 0xC0]);
            s3.Dispose();
            Assert.Equal(2, r3[0]);
            Assert.Equal("Preferred IP address 192.168.65.20 already used.", System.Text.Encoding.ASCII.GetString(r3, 2, r3[1]));
            // The first client reconnecting with its own address is welcome; with another one it is not.
            (Socket s4, byte[] r4) = Vmn3tPreferred(path, "11111111-2222-4333-8444-555555555555", [0x14, 0x41, 0xA8, 0xC0]);
            s4.Dispose();
            Assert.Equal(1, r4[0]);
            Assert.Equal(r2[5..11], r4[5..11]);
            (Socket s5, byte[] r5) = Vmn3tPreferred(path, "11111111-2222-4333-8444-555555555555", [0x15, 0x41, 0xA8, 0xC0]);
            s5.Dispose();
            Assert.Equal("UUID already assigned to a different IP than the IP requested by the client", System.Text.Encoding.ASCII.GetString(r5, 2, r5[1]));
        }
    }

    [Fact]
    public void Vmn3tRejectsBadMagic()
    {
        string path = Path.Combine(_dir, "vmnet2.sock");
        _server.ListenVmnet(path);
        using Socket s = Connect(path);
        s.Send(new byte[49]);
        byte[] b = new byte[1];
        Assert.Equal(0, s.Receive(b)); // Closed without a reply.
    }

    [Fact]
    public void PcapFileIsLibpcapWithEthernetLinkType()
    {
        using var ms = new MemoryStream();
        var pcap = new Kit.VpnKit.Capture.PcapWriter(ms);
        pcap.Write(G.ArpRequest(G.Gateway));
        byte[] b = ms.ToArray();
        Assert.Equal(0xa1b2c3d4u, BinaryPrimitives.ReadUInt32LittleEndian(b));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(20)));
        Assert.Equal(42u, BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(24 + 8)));
        Assert.Equal(24 + 16 + 42, b.Length);
    }
}
