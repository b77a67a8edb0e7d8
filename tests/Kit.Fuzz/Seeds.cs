using System.Buffers.Binary;
using Kit.HyperKit.VhostUser;
using Kit.NineP.Protocol;
using Kit.VpnKit.Links;
using Kit.VpnKit.Wire;

namespace Kit.Fuzz;

/// <summary>
/// Writes the seed corpora (tests/Kit.Fuzz/corpus/TARGET/NAME): a handful of valid inputs per target, built with the
/// project's own encoders so they stay valid as the code changes. `Kit.Fuzz --write-seeds DIR` regenerates them.
/// </summary>
internal static class Seeds
{
    public static void WriteAll(string root)
    {
        foreach ((string target, string name, byte[] bytes) in All())
        {
            string dir = Path.Combine(root, target);
            Directory.CreateDirectory(dir);
            File.WriteAllBytes(Path.Combine(dir, name), bytes);
        }
    }

    public static IEnumerable<(string Target, string Name, byte[] Bytes)> All()
    {
        // ---- 9P ----
        Fcall[] linuxSession = NinePLinuxSession();
        Fcall[] dataKitSession = NinePDataKitSession();
        Fcall[] legacySession = NinePLegacySession();
        foreach ((string name, Fcall f, Dialect d) in new[]
                 {
                     ("tversion", linuxSession[0], Dialect.Linux), ("twalk", linuxSession[2], Dialect.Linux),
                     ("tlcreate", dataKitSession[6], Dialect.Linux), ("twrite", dataKitSession[7], Dialect.Linux),
                     ("tsetattr", linuxSession[8], Dialect.Linux), ("tcreate-u", legacySession[4], Dialect.Unix),
                     ("twstat", legacySession[5], Dialect.Legacy),
                     ("rgetattr", new Fcall { Type = MessageType.Rgetattr, Tag = 1, Attr = new LAttr() }, Dialect.Linux),
                     ("rstat", new Fcall { Type = MessageType.Rstat, Tag = 1, Stat = new Stat { Name = "x" } }, Dialect.Unix),
                 })
        {
            yield return ("ninep-codec", name, [(byte)d, .. Encode(f, d)]);
        }
        yield return ("ninep-datakit", "linux-transaction", Session(dataKitSession, Dialect.Linux));
        yield return ("ninep-datakit", "linux-browse", Session(linuxSession, Dialect.Linux));
        yield return ("ninep-datakit", "legacy-browse", Session(legacySession, Dialect.Legacy));
        yield return ("ninep-hostfs", "linux-ops", Session(linuxSession, Dialect.Linux));
        yield return ("ninep-hostfs", "linux-create-write", Session(dataKitSession, Dialect.Linux));

        // ---- VPNKit ----
        yield return ("vpnkit-gateway", "dhcp-arp-ping-dns", FuzzTargets.Join([Rec(1, 0, DhcpDiscover()), Rec(1, 1, ArpRequest()), Rec(0, 1, Ping()), Rec(0, 1, DnsQuery())]));
        yield return ("vpnkit-gateway", "tcp-connect-data-fin", FuzzTargets.Join(
        [
            Rec(1, 0, ArpRequest()),
            Rec(1, 1, Tcp(TcpFlags.Syn, 1000, 0, [])),
            Rec(1 | 4, 1, Tcp(TcpFlags.Ack, 1001, 0, [])),
            Rec(1 | 4, 1, Tcp(TcpFlags.Ack | TcpFlags.Psh, 1001, 0, "GET / HTTP/1.0\r\n\r\n"u8.ToArray())),
            Rec(1 | 8, 100, Tcp(TcpFlags.Ack | TcpFlags.Fin, 1019, 0, [])),
        ]));
        yield return ("vpnkit-gateway", "tcp-refused-inbound", FuzzTargets.Join([Rec(1 | 2, 0, Tcp(TcpFlags.Syn, 5, 0, [])), Rec(1 | 32, 200, ArpRequest())]));
        byte[] syn = Tcp(TcpFlags.Syn, 1000, 0, []);
        yield return ("vpnkit-wire", "ipv4-tcp", [0, .. syn.AsSpan(14)]);
        yield return ("vpnkit-wire", "tcp", [1, .. syn.AsSpan(34)]);
        byte[] dhcp = DhcpDiscover();
        yield return ("vpnkit-wire", "dhcp", [2, .. dhcp.AsSpan(42)]);
        byte[] dns = DnsQuery();
        yield return ("vpnkit-wire", "dns", [3, .. dns.AsSpan(42)]);
        yield return ("vpnkit-wire", "ethernet-arp", [4, .. ArpRequest()]);
        byte[] init = new byte[Vmn3t.InitLength];
        "VMN3T"u8.CopyTo(init);
        BinaryPrimitives.WriteUInt32LittleEndian(init.AsSpan(5), Vmn3t.Version);
        byte[] connect = new byte[Vmn3t.CommandLength];
        connect[0] = 1;
        "a3b5c6d7-0000-4000-8000-000000000001"u8.CopyTo(connect.AsSpan(1));
        byte[] preferred = (byte[])connect.Clone();
        preferred[0] = 8;
        BinaryPrimitives.WriteUInt32LittleEndian(preferred.AsSpan(37), Ip4.FromBytes(192, 168, 65, 9));
        byte[] frame = [.. BitConverter.GetBytes((ushort)60), .. ArpRequest()];
        yield return ("vmn3t", "connect-one-frame", [0, .. init, .. connect, .. frame]);
        yield return ("vmn3t", "preferred-ip", [0, .. init, .. preferred, .. frame]);
        yield return ("vmn3t", "preferred-ip-refused", [1, .. init, .. preferred]);
        byte[] be = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(be, 60);
        yield return ("qemu-stream", "two-frames", [.. be, .. ArpRequest(), 0, 0, 0, 0, .. be, .. ArpRequest()]);

        // ---- HyperKit ----
        yield return ("virtio-splitqueue", "two-chains", QueueImage(eventIdx: false));
        yield return ("virtio-splitqueue", "event-idx", QueueImage(eventIdx: true));
        byte[][] vhost = VhostHandshake();
        yield return ("vhost-user-message", "header", [0, .. vhost[0]]);
        yield return ("vhost-user-message", "vring-state", [1, .. vhost[5].AsSpan(VhostUserHeader.Length)]);
        yield return ("vhost-user-message", "vring-address", [2, .. vhost[6].AsSpan(VhostUserHeader.Length)]);
        byte[] table = new byte[8 + (2 * VhostMemoryRegion.Length)];
        VhostMemoryTable.Write(table, [new(0, 0x10_0000, 0x7f00_0000_0000, 0), new(0x10_0000, 0x10_0000, 0x7f00_1000_0000, 0)]);
        yield return ("vhost-user-message", "mem-table", [3, .. table]);
        yield return ("vhost-user-message", "config", [4, .. vhost[8].AsSpan(VhostUserHeader.Length)]);
        yield return ("vhost-user-session", "handshake", FuzzTargets.Join(vhost));
        yield return ("vhost-user-session", "tx-ring", FuzzTargets.Join(VhostTxRing()));
    }

    // ---- 9P sessions ----

    private static byte[] Encode(Fcall f, Dialect d)
    {
        byte[] b = new byte[8192];
        int n = FcallCodec.Encode(f, d, b);
        return b.AsSpan(0, n).ToArray();
    }

    /// <summary>A session input: each message without its size field (the target adds it).</summary>
    private static byte[] Session(Fcall[] calls, Dialect d) => FuzzTargets.Join(calls.Select(f => Encode(f, d)[4..]));

    private static Fcall[] NinePLinuxSession()
    {
        ushort tag = 1;
        return
        [
            new() { Type = MessageType.Tversion, Tag = 0xFFFF, Msize = 65536, Version = "9P2000.L" },
            new() { Type = MessageType.Tattach, Tag = tag++, Fid = 0, Afid = uint.MaxValue, Uname = "root", Aname = "", NUname = 0 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 1, Wnames = [] },
            new() { Type = MessageType.Tgetattr, Tag = tag++, Fid = 1, RequestMask = 0x3FFF },
            new() { Type = MessageType.Tlopen, Tag = tag++, Fid = 1, Flags = 0x10000 },
            new() { Type = MessageType.Treaddir, Tag = tag++, Fid = 1, Offset = 0, Count = 4096 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 2, Wnames = ["file"] },
            new() { Type = MessageType.Tlopen, Tag = tag++, Fid = 2, Flags = 0 },
            new() { Type = MessageType.Tsetattr, Tag = tag++, Fid = 2, SetAttr = new LSetAttr { Valid = 1, Mode = 0x1A4 } },
            new() { Type = MessageType.Tread, Tag = tag++, Fid = 2, Offset = 0, Count = 100 },
            new() { Type = MessageType.Tmkdir, Tag = tag++, DFid = 0, Name = "d", LMode = 0x1ED, Gid = 0 },
            new() { Type = MessageType.Tsymlink, Tag = tag++, Fid = 0, Name = "l", Name2 = "file", Gid = 0 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 3, Wnames = ["l"] },
            new() { Type = MessageType.Treadlink, Tag = tag++, Fid = 3 },
            new() { Type = MessageType.Trenameat, Tag = tag++, Fid = 0, Name = "d", DFid = 0, Name2 = "e" },
            new() { Type = MessageType.Tunlinkat, Tag = tag++, Fid = 0, Name = "e", Flags = 0x200 },
            new() { Type = MessageType.Tstatfs, Tag = tag++, Fid = 0 },
            new() { Type = MessageType.Txattrwalk, Tag = tag++, Fid = 2, NewFid = 4, Name = "" },
            new() { Type = MessageType.Tflush, Tag = tag++, OldTag = 3 },
            new() { Type = MessageType.Tclunk, Tag = tag++, Fid = 2 },
            new() { Type = MessageType.Tclunk, Tag = tag++, Fid = 1 },
        ];
    }

    private static Fcall[] NinePDataKitSession()
    {
        ushort tag = 1;
        return
        [
            new() { Type = MessageType.Tversion, Tag = 0xFFFF, Msize = 65536, Version = "9P2000.L" },
            new() { Type = MessageType.Tattach, Tag = tag++, Fid = 0, Afid = uint.MaxValue, Uname = "root", Aname = "", NUname = 0 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 1, Wnames = ["branch"] },
            new() { Type = MessageType.Tmkdir, Tag = tag++, DFid = 1, Name = "master", LMode = 0x1ED, Gid = 0 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 2, Wnames = ["branch", "master", "transactions"] },
            new() { Type = MessageType.Tmkdir, Tag = tag++, DFid = 2, Name = "t1", LMode = 0x1ED, Gid = 0 },
            new() { Type = MessageType.Tlcreate, Tag = tag++, Fid = 0, Name = "hello", Flags = 0x41, LMode = 0x1A4, Gid = 0 },
            new() { Type = MessageType.Twrite, Tag = tag++, Fid = 0, Offset = 0, Data = "hi\n"u8.ToArray() },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 2, NewFid = 3, Wnames = ["t1", "rw"] },
            new() { Type = MessageType.Tlcreate, Tag = tag++, Fid = 3, Name = "hello", Flags = 0x41, LMode = 0x1A4, Gid = 0 },
            new() { Type = MessageType.Twrite, Tag = tag++, Fid = 3, Offset = 0, Data = "hi\n"u8.ToArray() },
            new() { Type = MessageType.Tclunk, Tag = tag++, Fid = 3 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 2, NewFid = 4, Wnames = ["t1", "ctl"] },
            new() { Type = MessageType.Tlopen, Tag = tag++, Fid = 4, Flags = 1 },
            new() { Type = MessageType.Twrite, Tag = tag++, Fid = 4, Offset = 0, Data = "commit"u8.ToArray() },
            new() { Type = MessageType.Tclunk, Tag = tag++, Fid = 4 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 5, Wnames = ["branch", "master", "ro", "hello"] },
            new() { Type = MessageType.Tlopen, Tag = tag++, Fid = 5, Flags = 0 },
            new() { Type = MessageType.Tread, Tag = tag++, Fid = 5, Offset = 0, Count = 100 },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 6, Wnames = ["branch", "master", "head"] },
            new() { Type = MessageType.Tlopen, Tag = tag++, Fid = 6, Flags = 0 },
            new() { Type = MessageType.Tread, Tag = tag++, Fid = 6, Offset = 0, Count = 100 },
        ];
    }

    private static Fcall[] NinePLegacySession()
    {
        ushort tag = 1;
        return
        [
            new() { Type = MessageType.Tversion, Tag = 0xFFFF, Msize = 8192, Version = "9P2000" },
            new() { Type = MessageType.Tattach, Tag = tag++, Fid = 0, Afid = uint.MaxValue, Uname = "glenda", Aname = "" },
            new() { Type = MessageType.Twalk, Tag = tag++, Fid = 0, NewFid = 1, Wnames = ["branch"] },
            new() { Type = MessageType.Topen, Tag = tag++, Fid = 1, Mode = 0 },
            new() { Type = MessageType.Tcreate, Tag = tag++, Fid = 0, Name = "n", Perm = 0x1A4, Mode = 1, Extension = "" },
            new() { Type = MessageType.Twstat, Tag = tag++, Fid = 0, Stat = new Stat { Name = "m" } },
            new() { Type = MessageType.Tread, Tag = tag++, Fid = 1, Offset = 0, Count = 4096 },
            new() { Type = MessageType.Tstat, Tag = tag++, Fid = 1 },
            new() { Type = MessageType.Tremove, Tag = tag++, Fid = 1 },
        ];
    }

    // ---- VPNKit frames ----

    private static readonly MacAddress Guest = new(0x02_50_00_00_00_01UL);
    private static readonly MacAddress GatewayMac = new(0xF6_16_36_BC_F9_C6UL);
    private static readonly uint GuestIp = Ip4.FromBytes(192, 168, 65, 3), GatewayIp = Ip4.FromBytes(192, 168, 65, 1), HostIp = Ip4.FromBytes(192, 168, 65, 2);

    private static byte[] Rec(byte flags, byte dt, byte[] frame) => [flags, dt, .. frame];

    private static byte[] ArpRequest()
    {
        byte[] f = new byte[60];
        EthernetFrame.Write(f, MacAddress.Broadcast, Guest, EtherType.Arp);
        ArpPacket.Write(f.AsSpan(14), 1, Guest, GuestIp, MacAddress.Zero, GatewayIp);
        return f;
    }

    private static byte[] Udp(MacAddress dst, uint src, uint dstIp, ushort sport, ushort dport, ReadOnlySpan<byte> payload)
    {
        byte[] f = new byte[14 + 20 + 8 + payload.Length];
        EthernetFrame.Write(f, dst, Guest, EtherType.Ipv4);
        Ipv4Packet.Write(f.AsSpan(14), 20 + 8 + payload.Length, 1, 64, IpProtocol.Udp, src, dstIp);
        payload.CopyTo(f.AsSpan(42));
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(38), (ushort)(8 + payload.Length));
        UdpDatagram.Write(f.AsSpan(34), sport, dport, src, dstIp);
        return f;
    }

    private static byte[] DhcpDiscover()
    {
        byte[] d = new byte[DhcpMessage.OptionsOffset + 8];
        d[0] = 1;
        d[1] = 1;
        d[2] = 6;
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(4), 0x12345678);
        Guest.Write(d.AsSpan(28));
        BinaryPrimitives.WriteUInt32BigEndian(d.AsSpan(DhcpMessage.FixedLength), DhcpMessage.MagicCookie);
        d[DhcpMessage.OptionsOffset] = DhcpOption.MessageType;
        d[DhcpMessage.OptionsOffset + 1] = 1;
        d[DhcpMessage.OptionsOffset + 2] = DhcpOption.Discover;
        d[DhcpMessage.OptionsOffset + 3] = DhcpOption.End;
        return Udp(MacAddress.Broadcast, 0, uint.MaxValue, 68, 67, d);
    }

    private static byte[] DnsQuery()
    {
        byte[] q = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 4, (byte)'h', (byte)'o', (byte)'s', (byte)'t', 8,
            (byte)'i', (byte)'n', (byte)'t', (byte)'e', (byte)'r', (byte)'n', (byte)'a', (byte)'l', 0, 0, 1, 0, 1];
        return Udp(GatewayMac, GuestIp, GatewayIp, 40000, 53, q);
    }

    private static byte[] Ping()
    {
        byte[] f = new byte[14 + 20 + 8 + 8];
        EthernetFrame.Write(f, GatewayMac, Guest, EtherType.Ipv4);
        Ipv4Packet.Write(f.AsSpan(14), 36, 2, 64, IpProtocol.Icmp, GuestIp, GatewayIp);
        IcmpPacket.WriteEcho(f.AsSpan(34), 8, 7, 1);
        return f;
    }

    private static byte[] Tcp(TcpFlags flags, uint seq, uint ack, byte[] payload)
    {
        int options = (flags & TcpFlags.Syn) != 0 ? 4 : 0;
        byte[] f = new byte[14 + 20 + 20 + options + payload.Length];
        EthernetFrame.Write(f, GatewayMac, Guest, EtherType.Ipv4);
        Ipv4Packet.Write(f.AsSpan(14), 40 + options + payload.Length, 3, 64, IpProtocol.Tcp, GuestIp, HostIp);
        if (options > 0)
        {
            f[54] = 2; // MSS 1460
            f[55] = 4;
            BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(56), 1460);
        }
        payload.CopyTo(f.AsSpan(54 + options));
        TcpSegment.Write(f.AsSpan(34), 20 + options, 40001, 80, seq, ack, flags, 65535, GuestIp, HostIp);
        return f;
    }

    // ---- virtio ----

    /// <summary>A 16-entry queue: descriptors at 0x1000, avail at 0x2000, used at 0x3000; a 2-descriptor chain and a 1-descriptor one.</summary>
    private static byte[] QueueImage(bool eventIdx)
    {
        const ushort size = 16;
        byte[] img = new byte[10 + 0x3000 + 6 + (8 * size)];
        Span<byte> h = img;
        BinaryPrimitives.WriteUInt16LittleEndian(h, size);
        BinaryPrimitives.WriteUInt16LittleEndian(h[2..], 0x1000);
        BinaryPrimitives.WriteUInt16LittleEndian(h[4..], 0x2000);
        BinaryPrimitives.WriteUInt16LittleEndian(h[6..], 0x3000);
        h[8] = (byte)((eventIdx ? 1 : 0) | (1 << 2));
        Span<byte> m = img.AsSpan(10);
        void Desc(int i, ulong addr, uint len, ushort flags, ushort next)
        {
            Span<byte> d = img.AsSpan(10 + 0x1000 + (16 * i));
            BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
            BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
            BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
            BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
        }
        Desc(0, 0x4000, 64, 1, 1); // readable, NEXT
        Desc(1, 0x5000, 128, 2, 0); // writable
        Desc(2, 0x6000, 32, 0, 0);
        BinaryPrimitives.WriteUInt16LittleEndian(m[0x2002..], 2); // avail.idx
        BinaryPrimitives.WriteUInt16LittleEndian(m[0x2004..], 0);
        BinaryPrimitives.WriteUInt16LittleEndian(m[0x2006..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(m[(0x2004 + (2 * size))..], 1); // used_event
        return img;
    }

    // ---- vhost-user ----

    private static byte[] Msg(VhostUserRequest request, ReadOnlySpan<byte> payload, uint flags = VhostUserFlags.Version)
    {
        byte[] m = new byte[VhostUserHeader.Length + payload.Length];
        new VhostUserHeader(request, flags, (uint)payload.Length).Write(m);
        payload.CopyTo(m.AsSpan(VhostUserHeader.Length));
        return m;
    }

    private static byte[] U64(ulong v)
    {
        byte[] b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        return b;
    }

    private static byte[][] VhostHandshake()
    {
        byte[] state = new byte[VringState.Length];
        new VringState(0, 256).Write(state);
        byte[] address = new byte[VringAddress.Length];
        new VringAddress(0, 0, 0x7f00_0000_0000, 0x7f00_0000_2000, 0x7f00_0000_1000, 0).Write(address);
        byte[] config = new byte[VhostConfigView.HeaderLength + 12];
        BinaryPrimitives.WriteUInt32LittleEndian(config.AsSpan(4), 12);
        return
        [
            Msg(VhostUserRequest.GetFeatures, []),
            Msg(VhostUserRequest.SetFeatures, U64((1UL << 32) | (1UL << 30) | (1UL << 29))),
            Msg(VhostUserRequest.GetProtocolFeatures, []),
            Msg(VhostUserRequest.SetProtocolFeatures, U64(VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.NetMtu)),
            Msg(VhostUserRequest.SetOwner, [], VhostUserFlags.Version | VhostUserFlags.NeedReply),
            Msg(VhostUserRequest.SetVringNum, state),
            Msg(VhostUserRequest.SetVringAddr, address),
            Msg(VhostUserRequest.GetQueueNum, []),
            Msg(VhostUserRequest.GetConfig, config),
            Msg(VhostUserRequest.SetVringKick, U64(VringFdPayload.NoFd)),
            Msg(VhostUserRequest.SetVringEnable, state),
            Msg(VhostUserRequest.GetVringBase, state),
            Msg(VhostUserRequest.ResetOwner, []),
        ];
    }

    /// <summary>
    /// A session whose transmit ring really runs (the vhost-user-session target's memfd mode): a NONE record with the
    /// guest memory (an 8-entry ring at 0x0/0x100/0x200 holding one 54-byte chain at 0x300: a virtio-net header and an
    /// ARP request), one memfd region, the ring set up, and SET_VRING_KICK with an eventfd, which starts and kicks it.
    /// </summary>
    private static byte[][] VhostTxRing()
    {
        const ulong user = 0x7f00_0000_0000;
        const ushort size = 8;
        byte[] memory = new byte[0x300 + 12 + 42];
        Span<byte> m = memory;
        BinaryPrimitives.WriteUInt64LittleEndian(m, 0x300); // desc[0].addr
        BinaryPrimitives.WriteUInt32LittleEndian(m[8..], 12 + 42); // desc[0].len, flags 0, next 0
        BinaryPrimitives.WriteUInt16LittleEndian(m[0x102..], 1); // avail.idx = 1, avail.ring[0] = 0
        m[(0x300 + 12)..].Fill(0xff); // broadcast destination, then an ARP-looking body
        BinaryPrimitives.WriteUInt16BigEndian(m[(0x300 + 12 + 12)..], 0x0806);
        byte[] table = new byte[8 + VhostMemoryRegion.Length];
        VhostMemoryTable.Write(table, [new(0, HyperKitTargets.GuestBytes, user, 0)]);
        byte[] state = new byte[VringState.Length];
        new VringState(1, size).Write(state);
        byte[] zero = new byte[VringState.Length];
        new VringState(1, 0).Write(zero);
        byte[] enable = new byte[VringState.Length];
        new VringState(1, 1).Write(enable);
        byte[] address = new byte[VringAddress.Length];
        new VringAddress(1, 0, user, user + 0x200, user + 0x100, 0).Write(address);
        return
        [
            Msg(0, memory),
            Msg(VhostUserRequest.GetFeatures, []),
            Msg(VhostUserRequest.SetFeatures, U64((1UL << 32) | (1UL << 30))),
            Msg(VhostUserRequest.SetOwner, []),
            Msg(VhostUserRequest.SetMemTable, table),
            Msg(VhostUserRequest.SetVringNum, state),
            Msg(VhostUserRequest.SetVringAddr, address),
            Msg(VhostUserRequest.SetVringBase, zero),
            Msg(VhostUserRequest.SetVringCall, U64(1)),
            Msg(VhostUserRequest.SetVringKick, U64(1)),
            Msg(VhostUserRequest.SetVringEnable, enable),
            Msg(VhostUserRequest.GetVringBase, zero),
        ];
    }
}
