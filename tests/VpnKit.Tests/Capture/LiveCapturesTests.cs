using System.Buffers.Binary;
using Kit.VpnKit.Capture;
using Kit.VpnKit.Wire;
using Xunit;

namespace Kit.VpnKit.Tests.Capture;

/// <summary>Live captures of one flow: the 5-tuple filter (both directions, open parts), the caps, the streamed file.</summary>
public sealed class LiveCapturesTests
{
    private const uint Guest = 0xC0A84103, Host = 0xC0A84102, Other = 0xC0A84109; // 192.168.65.3, .2, .9

    /// <summary>Ethernet II + IPv4 (no options) + the first 4 bytes of a TCP/UDP header + some payload.</summary>
    private static byte[] Frame(byte proto, uint src, ushort srcPort, uint dst, ushort dstPort, int payload = 16)
    {
        byte[] f = new byte[14 + 20 + 20 + payload];
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0800);
        Span<byte> ip = f.AsSpan(14);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(2), (ushort)(f.Length - 14));
        ip[8] = 64;
        ip[9] = proto;
        BinaryPrimitives.WriteUInt32BigEndian(ip.Slice(12), src);
        BinaryPrimitives.WriteUInt32BigEndian(ip.Slice(16), dst);
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(20), srcPort);
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(22), dstPort);
        return f;
    }

    private static FlowFilter Tcp(ushort guestPort, ushort remotePort) => new(6, IpAddr.V4(Guest), guestPort, IpAddr.V4(Host), remotePort);

    private static readonly UInt128 Guest6 = Ip6.Parse("fd00:6b69:7400::3"), Host6 = Ip6.Parse("fd00:6b69:7400::2");

    /// <summary>
    /// Ethernet II + IPv6 (RFC 8200 §3) + optional extension headers given whole (each one's first byte, its next header,
    /// is filled in here) + the first 4 bytes of a TCP/UDP header (or ICMPv6's type and code) + some payload.
    /// </summary>
    private static byte[] Frame6(byte proto, UInt128 src, ushort srcPort, UInt128 dst, ushort dstPort, params byte[][] extensions)
    {
        int ext = extensions.Sum(e => e.Length);
        byte[] f = new byte[14 + 40 + ext + 20 + 16];
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x86DD);
        Span<byte> ip = f.AsSpan(14);
        ip[0] = 0x60;
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(4), (ushort)(f.Length - 54));
        ip[7] = 64;
        BinaryPrimitives.WriteUInt128BigEndian(ip.Slice(8), src);
        BinaryPrimitives.WriteUInt128BigEndian(ip.Slice(24), dst);
        int at = 40;
        byte next = extensions.Length > 0 ? (byte)0 : proto; // the first extension here is Hop-by-Hop, the rest Fragment
        ip[6] = next;
        for (int i = 0; i < extensions.Length; i++)
        {
            extensions[i].CopyTo(ip.Slice(at));
            ip[at] = i + 1 < extensions.Length ? (byte)44 : proto;
            at += extensions[i].Length;
        }
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(at), srcPort);
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(at + 2), dstPort);
        return f;
    }

    [Fact]
    public void A_5_tuple_takes_both_directions_and_nothing_else()
    {
        FlowFilter f = Tcp(40000, 8080);
        Assert.True(f.Matches(Frame(6, Guest, 40000, Host, 8080)));
        Assert.True(f.Matches(Frame(6, Host, 8080, Guest, 40000)));
        Assert.False(f.Matches(Frame(6, Guest, 40001, Host, 8080)));
        Assert.False(f.Matches(Frame(17, Guest, 40000, Host, 8080)));
        Assert.False(f.Matches(Frame(6, Guest, 40000, Other, 8080)));
        Assert.False(f.Matches(Frame(6, Host, 40000, Guest, 8080)));
        byte[] arp = Frame(6, Guest, 40000, Host, 8080);
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(12), 0x0806);
        Assert.False(f.Matches(arp));
    }

    [Fact]
    public void Open_parts_match_anything_there()
    {
        FlowFilter anyGuestPort = FlowFilter.Create("tcp", null, null, "192.168.65.2", 8080, out string? error)!;
        Assert.Null(error);
        Assert.True(anyGuestPort.Matches(Frame(6, Guest, 1234, Host, 8080)));
        Assert.True(anyGuestPort.Matches(Frame(6, Host, 8080, Other, 999)));
        Assert.False(anyGuestPort.Matches(Frame(6, Guest, 1234, Host, 8081)));
    }

    [Fact]
    public void An_ipv6_flow_matches_past_extension_headers_and_icmp_takes_icmpv6()
    {
        FlowFilter f = FlowFilter.Create("tcp", "fd00:6b69:7400::3", 40000, "FD00:6B69:7400:0::2", 8080, out string? error)!;
        Assert.Null(error);
        Assert.True(f.Matches(Frame6(6, Guest6, 40000, Host6, 8080)));
        Assert.True(f.Matches(Frame6(6, Host6, 8080, Guest6, 40000)));
        Assert.False(f.Matches(Frame6(6, Guest6, 40001, Host6, 8080)));
        Assert.False(f.Matches(Frame6(17, Guest6, 40000, Host6, 8080)));
        Assert.False(f.Matches(Frame(6, Guest, 40000, Host, 8080)));
        byte[] hopByHop = new byte[8];
        Assert.True(f.Matches(Frame6(6, Guest6, 40000, Host6, 8080, hopByHop)));
        // A first fragment carries the ports; a later one (offset 8 bytes) matches only a filter without ports.
        byte[] first = new byte[8], later = new byte[8];
        BinaryPrimitives.WriteUInt16BigEndian(first.AsSpan(2), 0x0001);   // offset 0, M=1
        BinaryPrimitives.WriteUInt16BigEndian(later.AsSpan(2), 1 << 3);  // offset 8, M=0
        Assert.True(f.Matches(Frame6(6, Guest6, 40000, Host6, 8080, hopByHop, first)));
        Assert.False(f.Matches(Frame6(6, Guest6, 40000, Host6, 8080, hopByHop, later)));
        FlowFilter hosts = FlowFilter.Create("tcp", "fd00:6b69:7400::3", null, "fd00:6b69:7400::2", null, out _)!;
        Assert.True(hosts.Matches(Frame6(6, Guest6, 40000, Host6, 8080, hopByHop, later)));

        FlowFilter ping = FlowFilter.Create("icmp", null, null, "fd00:6b69:7400::2", null, out _)!;
        Assert.True(ping.Matches(Frame6(58, Guest6, 0x8000, Host6, 0)));
        Assert.False(ping.Matches(Frame(1, Guest, 0, Host, 0))); // the IPv4 host is another address
        Assert.False(ping.Matches(Frame6(6, Guest6, 40000, Host6, 8080)));
    }

    [Theory]
    [InlineData("sctp", null, null)]
    [InlineData("tcp", "192.168.65.300", null)]
    [InlineData("tcp", "1", null)]
    [InlineData("tcp", "fe80::1%eth0", null)]
    [InlineData("tcp", "fd00::1::2", null)]
    [InlineData("tcp", null, 70000)]
    [InlineData("tcp", null, 0)]
    public void Bad_filters_get_a_reason(string proto, string? address, int? port)
    {
        Assert.Null(FlowFilter.Create(proto, address, port, null, null, out string? error));
        Assert.False(string.IsNullOrEmpty(error));
    }

    [Fact]
    public void Arbitrary_bytes_never_throw()
    {
        var random = new Random(17);
        FlowFilter f = Tcp(1, 2);
        for (int i = 0; i < 20_000; i++)
        {
            byte[] b = new byte[random.Next(0, 80)];
            random.NextBytes(b);
            if (b.Length > 14 && i % 2 == 0)
            {
                b[12] = 8;
                b[13] = 0;
                b[14] = (byte)(0x40 | (b[14] & 0xF));
            }
            else if (b.Length > 14 && i % 4 == 1)
            {
                (b[12], b[13]) = (0x86, 0xDD);
                b[14] = (byte)(0x60 | (b[14] & 0xF));
            }
            f.Matches(b);
        }
    }

    [Fact]
    public async Task The_stream_holds_the_header_and_the_flows_frames_and_ends_when_removed()
    {
        var captures = new LiveCaptures();
        LiveCapture c = captures.Start(Tcp(40000, 8080))!;
        using var file = new MemoryStream();
        Task reading = c.CopyToAsync(file, TestContext.Current.CancellationToken);
        byte[] mine = Frame(6, Guest, 40000, Host, 8080, payload: 100);
        captures.Offer(mine);
        captures.Offer(Frame(6, Guest, 40001, Host, 8080));
        captures.Offer(Frame(6, Host, 8080, Guest, 40000, payload: 7));
        Assert.Equal(2, c.Frames);
        Assert.True(captures.Remove(c.Id));
        await reading.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);

        byte[] pcap = file.ToArray();
        Assert.Equal(24 + 16 + mine.Length + 16 + (14 + 40 + 7), pcap.Length);
        Assert.Equal(0xa1b2c3d4, BinaryPrimitives.ReadUInt32LittleEndian(pcap));
        Assert.Equal(mine.Length, BinaryPrimitives.ReadInt32LittleEndian(pcap.AsSpan(24 + 8)));
        Assert.True(pcap.AsSpan(24 + 16, mine.Length).SequenceEqual(mine));
        Assert.False(captures.Remove(c.Id));
        Assert.Null(captures.Find(c.Id));
    }

    [Fact]
    public async Task A_capture_stops_at_its_byte_cap_and_only_so_many_are_held()
    {
        var captures = new LiveCaptures(maxCaptures: 2, maxBytes: 24 + 3 * (16 + 70));
        LiveCapture c = captures.Start(Tcp(40000, 8080))!;
        for (int i = 0; i < 10; i++)
        {
            captures.Offer(Frame(6, Guest, 40000, Host, 8080));
        }
        Assert.Equal(3, c.Frames);
        Assert.True(c.Full);
        Assert.Equal(24 + 3 * (16 + 70), c.Bytes);
        // A full capture's stream ends by itself.
        using var file = new MemoryStream();
        await c.CopyToAsync(file, TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        Assert.Equal(c.Bytes, file.Length);

        Assert.NotNull(captures.Start(Tcp(1, 2)));
        Assert.Null(captures.Start(Tcp(3, 4)));
        captures.Remove(c.Id);
        Assert.NotNull(captures.Start(Tcp(3, 4)));
    }
}
