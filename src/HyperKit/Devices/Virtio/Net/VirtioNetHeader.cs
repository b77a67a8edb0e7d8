using System.Buffers.Binary;

namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>Why a guest frame was refused.</summary>
public enum NetHeaderError
{
    None,
    /// <summary>Shorter than the 12-byte header plus an Ethernet header.</summary>
    TooShort,
    /// <summary>Larger than <see cref="VirtioNetHeader.MaxFrame"/>.</summary>
    TooLong,
    /// <summary>A flag or GSO type that was not negotiated or does not exist.</summary>
    BadFlags,
    BadGsoType,
    /// <summary>csum_start/csum_offset point outside the frame.</summary>
    BadChecksumRange,
    /// <summary>A GSO frame with gso_size 0 or without NEEDS_CSUM.</summary>
    BadGso,
}

/// <summary>
/// struct virtio_net_hdr_v1 (virtio 1.2, 5.1.6): {flags u8, gso_type u8, hdr_len le16, gso_size le16, csum_start le16,
/// csum_offset le16, num_buffers le16}, 12 bytes in front of every frame once VERSION_1 is negotiated (num_buffers is
/// always present then; it counts mergeable buffers on receive). The same layout (without num_buffers) is what a TAP
/// device with IFF_VNET_HDR exchanges.
/// </summary>
public struct VirtioNetHeader
{
    public const int Size = 12;
    /// <summary>Largest Ethernet frame (without header) either direction: 65535 of IP plus the Ethernet header, as Linux's
    /// virtio_net allows (MAX_PACKET_LEN is ETH_HLEN + VLAN_HLEN + ETH_DATA_LEN only without offloads).</summary>
    public const int MaxFrame = 65550;
    public const byte FlagNeedsCsum = 1, FlagDataValid = 2, FlagRscInfo = 4;
    public const byte GsoNone = 0, GsoTcpV4 = 1, GsoUdp = 3, GsoTcpV6 = 4, GsoEcn = 0x80;

    public byte Flags;
    public byte GsoType;
    public ushort HdrLen;
    public ushort GsoSize;
    public ushort CsumStart;
    public ushort CsumOffset;
    public ushort NumBuffers;

    public readonly bool NeedsChecksum => (Flags & FlagNeedsCsum) != 0;

    public static VirtioNetHeader Read(ReadOnlySpan<byte> b) => b.Length < Size ? default : new VirtioNetHeader
    {
        Flags = b[0],
        GsoType = b[1],
        HdrLen = BinaryPrimitives.ReadUInt16LittleEndian(b[2..]),
        GsoSize = BinaryPrimitives.ReadUInt16LittleEndian(b[4..]),
        CsumStart = BinaryPrimitives.ReadUInt16LittleEndian(b[6..]),
        CsumOffset = BinaryPrimitives.ReadUInt16LittleEndian(b[8..]),
        NumBuffers = BinaryPrimitives.ReadUInt16LittleEndian(b[10..]),
    };

    public readonly void Write(Span<byte> b)
    {
        b[0] = Flags;
        b[1] = GsoType;
        BinaryPrimitives.WriteUInt16LittleEndian(b[2..], HdrLen);
        BinaryPrimitives.WriteUInt16LittleEndian(b[4..], GsoSize);
        BinaryPrimitives.WriteUInt16LittleEndian(b[6..], CsumStart);
        BinaryPrimitives.WriteUInt16LittleEndian(b[8..], CsumOffset);
        BinaryPrimitives.WriteUInt16LittleEndian(b[10..], NumBuffers);
    }

    /// <summary>
    /// Checks a header the driver sent (virtio 1.2, 5.1.6.2.1: the driver sets NEEDS_CSUM only with CSUM, GSO types
    /// only with the matching HOST_ feature, and then also NEEDS_CSUM). <paramref name="frameLength"/> excludes the header.
    /// </summary>
    public readonly NetHeaderError Validate(int frameLength, bool csum, bool tso4)
    {
        if (frameLength < 14)
        {
            return NetHeaderError.TooShort;
        }
        if (frameLength > MaxFrame)
        {
            return NetHeaderError.TooLong;
        }
        if ((Flags & ~(FlagNeedsCsum | FlagDataValid)) != 0 || (NeedsChecksum && !csum))
        {
            return NetHeaderError.BadFlags;
        }
        if (NeedsChecksum && CsumStart + CsumOffset + 2 > frameLength)
        {
            return NetHeaderError.BadChecksumRange;
        }
        switch (GsoType)
        {
            case GsoNone:
                return NetHeaderError.None;
            case GsoTcpV4 when tso4:
                return GsoSize == 0 || !NeedsChecksum ? NetHeaderError.BadGso : NetHeaderError.None;
            default:
                return NetHeaderError.BadGsoType;
        }
    }
}

/// <summary>Internet checksum (RFC 1071) helpers for finishing a partial checksum in software.</summary>
public static class NetChecksum
{
    /// <summary>Ones'-complement sum of <paramref name="data"/>, not folded.</summary>
    public static ulong Sum(ReadOnlySpan<byte> data, ulong sum = 0)
    {
        int i = 0;
        for (; i + 1 < data.Length; i += 2)
        {
            sum += (uint)(data[i] << 8 | data[i + 1]);
        }
        if (i < data.Length)
        {
            sum += (uint)(data[i] << 8);
        }
        return sum;
    }

    public static ushort Fold(ulong sum)
    {
        while (sum >> 16 != 0)
        {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        return (ushort)sum;
    }

    /// <summary>
    /// Does what NEEDS_CSUM asks of whoever cannot pass it on (virtio 1.2, 5.1.6.2): the field at csum_start +
    /// csum_offset holds the pseudo-header sum; sum from csum_start to the end and store the complement there.
    /// </summary>
    public static bool Complete(Span<byte> frame, int start, int offset)
    {
        if (start < 0 || offset < 0 || start + offset + 2 > frame.Length)
        {
            return false;
        }
        ushort c = (ushort)~Fold(Sum(frame[start..]));
        if (c == 0 && offset == 6)
        {
            c = 0xFFFF; // UDP: a computed zero is sent as all ones (RFC 768)
        }
        BinaryPrimitives.WriteUInt16BigEndian(frame[(start + offset)..], c);
        return true;
    }
}
