using System.Buffers.Binary;
using Kit.VpnKit.Links;

namespace Kit.VpnKit.Tests.Links;

/// <summary>
/// The TAP link's check of each received struct virtio_net_hdr (virtio 1.2 §5.1.6) against its frame: what the kernel
/// sends passes; a header that lies is dropped (and counted by the link), never trusted.
/// </summary>
public sealed class TapHeaderTests
{
    private const byte NeedsCsum = 1, GsoTcpV4 = 1, GsoUdp = 3, GsoTcpV6 = 4, GsoEcn = 0x80;

    /// <summary>An Ethernet frame holding an IP packet of <paramref name="version"/> and TCP behind it, 2000 bytes.</summary>
    private static byte[] Frame(int version)
    {
        byte[] f = new byte[2000];
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), version == 4 ? (ushort)0x0800 : (ushort)0x86DD);
        f[14] = version == 4 ? (byte)0x45 : (byte)0x60;
        f[(version == 4 ? 34 : 54) + 12] = 0x50; // TCP data offset 5
        return f;
    }

    private static byte[] Header(byte flags, byte gso, int hdrLen, int gsoSize, int csumStart, int csumOffset)
    {
        byte[] h = new byte[10];
        h[0] = flags;
        h[1] = gso;
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(2), (ushort)hdrLen);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(4), (ushort)gsoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(6), (ushort)csumStart);
        BinaryPrimitives.WriteUInt16LittleEndian(h.AsSpan(8), (ushort)csumOffset);
        return h;
    }

    [Fact]
    public void WhatTheKernelSendsFits()
    {
        Assert.True(TapLink.HeaderFits(new byte[10], Frame(6)));
        Assert.True(TapLink.HeaderFits(Header(NeedsCsum, 0, 0, 0, 54, 16), Frame(6)));
        Assert.True(TapLink.HeaderFits(Header(NeedsCsum, GsoTcpV4, 54, 1448, 34, 16), Frame(4)));
        Assert.True(TapLink.HeaderFits(Header(NeedsCsum, GsoTcpV6, 74, 1428, 54, 16), Frame(6)));
        Assert.True(TapLink.HeaderFits(Header(NeedsCsum, GsoTcpV6 | GsoEcn, 74, 1428, 54, 16), Frame(6)));
        // The link's own headers for what the gateway sends read back as fitting.
        byte[] h = new byte[10];
        TapLink.WriteOffloadHeader(h, Frame(4), 1460);
        Assert.Equal([NeedsCsum, GsoTcpV4], h[..2]);
        Assert.Equal(34, BinaryPrimitives.ReadUInt16LittleEndian(h.AsSpan(6)));
        Assert.True(TapLink.HeaderFits(h, Frame(4)));
        TapLink.WriteOffloadHeader(h, Frame(6), 0);
        Assert.Equal([NeedsCsum, 0], h[..2]);
        Assert.True(TapLink.HeaderFits(h, Frame(6)));
    }

    [Theory]
    [InlineData(NeedsCsum, GsoTcpV6, 74, 0, 54, 16, 6)]      // gso_size 0
    [InlineData(NeedsCsum, GsoTcpV6, 2001, 1428, 54, 16, 6)] // hdr_len past the frame
    [InlineData(NeedsCsum, GsoTcpV6, 54, 1448, 34, 16, 4)]   // TCPV6 on an IPv4 packet
    [InlineData(NeedsCsum, GsoTcpV4, 74, 1428, 54, 16, 6)]   // TCPV4 on an IPv6 packet
    [InlineData(0, GsoTcpV6, 74, 1428, 54, 16, 6)]           // GSO without NEEDS_CSUM
    [InlineData(NeedsCsum, GsoUdp, 62, 1400, 54, 6, 6)]      // a GSO type we never turned on
    [InlineData(NeedsCsum, 0, 0, 0, 1990, 16, 6)]            // csum_start + csum_offset past the frame
    public void AHeaderThatLiesDoesNotFit(byte flags, byte gso, int hdrLen, int gsoSize, int csumStart, int csumOffset, int version)
    {
        Assert.False(TapLink.HeaderFits(Header(flags, gso, hdrLen, gsoSize, csumStart, csumOffset), Frame(version)));
    }

    [Fact]
    public void AGsoHeaderOnARuntFrameDoesNotFit()
    {
        Assert.False(TapLink.HeaderFits(Header(NeedsCsum, GsoTcpV6, 0, 1428, 0, 0), new byte[14]));
    }
}
