using System.Buffers.Binary;

namespace Kit.HyperKit.Devices.Virtio.Vsock;

/// <summary>Packet operations (virtio 1.2, 5.10.6).</summary>
public enum VsockOp : ushort
{
    Invalid = 0,
    Request = 1,
    Response = 2,
    Rst = 3,
    Shutdown = 4,
    Rw = 5,
    CreditUpdate = 6,
    CreditRequest = 7,
}

/// <summary>Constants of the virtio-vsock packet format (virtio 1.2, 5.10.6).</summary>
public static class Vsock
{
    /// <summary>The only socket type we carry (SEQPACKET, 2, is not offered).</summary>
    public const ushort TypeStream = 1;

    /// <summary>SHUTDOWN flags: the sender will receive no more (RCV) / send no more (SEND).</summary>
    public const uint ShutdownRecv = 1, ShutdownSend = 2, ShutdownBoth = 3;

    /// <summary>The well-known CID of the host (virtio 1.2, 5.10.4).</summary>
    public const ulong HostCid = 2;

    /// <summary>Linux never puts more than 64 KiB in one packet (VIRTIO_VSOCK_MAX_PKT_BUF_SIZE); a longer len is a lie.</summary>
    public const int MaxPayload = 64 * 1024;
}

/// <summary>
/// struct virtio_vsock_hdr (virtio 1.2, 5.10.6): 44 little-endian bytes {src_cid u64, dst_cid u64, src_port u32,
/// dst_port u32, len u32, type u16, op u16, flags u32, buf_alloc u32, fwd_cnt u32}. Every packet, whatever its op,
/// carries the sender's credit (buf_alloc, fwd_cnt).
/// </summary>
public readonly record struct VsockHeader(
    ulong SrcCid, ulong DstCid, uint SrcPort, uint DstPort, uint Len, ushort Type, VsockOp Op, uint Flags, uint BufAlloc, uint FwdCnt)
{
    public const int Size = 44;

    /// <summary>Parses the fixed header; false only when fewer than 44 bytes are given (values are checked by the caller).</summary>
    public static bool TryRead(ReadOnlySpan<byte> data, out VsockHeader header)
    {
        if (data.Length < Size)
        {
            header = default;
            return false;
        }
        header = new VsockHeader(
            BinaryPrimitives.ReadUInt64LittleEndian(data),
            BinaryPrimitives.ReadUInt64LittleEndian(data[8..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[16..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[20..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[24..]),
            BinaryPrimitives.ReadUInt16LittleEndian(data[28..]),
            (VsockOp)BinaryPrimitives.ReadUInt16LittleEndian(data[30..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[32..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[36..]),
            BinaryPrimitives.ReadUInt32LittleEndian(data[40..]));
        return true;
    }

    public void Write(Span<byte> data)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(data, SrcCid);
        BinaryPrimitives.WriteUInt64LittleEndian(data[8..], DstCid);
        BinaryPrimitives.WriteUInt32LittleEndian(data[16..], SrcPort);
        BinaryPrimitives.WriteUInt32LittleEndian(data[20..], DstPort);
        BinaryPrimitives.WriteUInt32LittleEndian(data[24..], Len);
        BinaryPrimitives.WriteUInt16LittleEndian(data[28..], Type);
        BinaryPrimitives.WriteUInt16LittleEndian(data[30..], (ushort)Op);
        BinaryPrimitives.WriteUInt32LittleEndian(data[32..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(data[36..], BufAlloc);
        BinaryPrimitives.WriteUInt32LittleEndian(data[40..], FwdCnt);
    }
}
