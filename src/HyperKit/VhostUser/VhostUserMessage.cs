using System.Buffers.Binary;

namespace Kit.HyperKit.VhostUser;

/// <summary>Frontend requests (vhost-user.rst, "Front-end message types"); the numbers are the wire values.</summary>
public enum VhostUserRequest : uint
{
    None = 0,
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    ResetOwner = 4,
    SetMemTable = 5,
    SetLogBase = 6,
    SetLogFd = 7,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    GetVringBase = 11,
    SetVringKick = 12,
    SetVringCall = 13,
    SetVringErr = 14,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    GetQueueNum = 17,
    SetVringEnable = 18,
    SendRarp = 19,
    NetSetMtu = 20,
    SetBackendReqFd = 21,
    IotlbMsg = 22,
    SetVringEndian = 23,
    GetConfig = 24,
    SetConfig = 25,
    ResetDevice = 34,
    GetMaxMemSlots = 36,
}

/// <summary>Header flags (vhost-user.rst, "Message Specification"): version in bits 0-1, REPLY, NEED_REPLY.</summary>
public static class VhostUserFlags
{
    public const uint VersionMask = 0x3, Version = 0x1, Reply = 0x4, NeedReply = 0x8;
}

/// <summary>VHOST_USER_PROTOCOL_F_* bits (vhost-user.rst, "Protocol features").</summary>
public static class VhostUserProtocolFeatures
{
    public const ulong Mq = 1UL << 0, LogShmfd = 1UL << 1, Rarp = 1UL << 2, ReplyAck = 1UL << 3, NetMtu = 1UL << 4,
        BackendReq = 1UL << 5, Config = 1UL << 9, ResetDevice = 1UL << 13, ConfigureMemSlots = 1UL << 15;
}

/// <summary>Why a message was refused; the connection that sent it is dropped (or answered with an error).</summary>
public enum VhostUserError
{
    None,
    ShortHeader,
    BadVersion,
    /// <summary>The REPLY bit is set on a request: only the backend sends replies.</summary>
    UnexpectedReply,
    PayloadTooLarge,
    ShortPayload,
    TooManyRegions,
    BadConfigSize,
}

/// <summary>The 12-byte header: request u32, flags u32, size u32, little-endian (vhost-user.rst, "Header").</summary>
public readonly record struct VhostUserHeader(VhostUserRequest Request, uint Flags, uint Size)
{
    public const int Length = 12;

    /// <summary>
    /// Largest payload accepted. The biggest message we take is a memory table of 8 regions (8 + 8 * 32 bytes) or a
    /// 256-byte config; 4 KiB leaves room and bounds what a hostile frontend can make us buffer.
    /// </summary>
    public const int MaxPayload = 4096;

    public bool NeedReply => (Flags & VhostUserFlags.NeedReply) != 0;

    /// <summary>Parses a frontend's header; never throws. A payload larger than <see cref="MaxPayload"/> is refused.</summary>
    public static bool TryParse(ReadOnlySpan<byte> bytes, out VhostUserHeader header, out VhostUserError error)
    {
        header = default;
        if (bytes.Length < Length)
        {
            error = VhostUserError.ShortHeader;
            return false;
        }
        header = new VhostUserHeader(
            (VhostUserRequest)BinaryPrimitives.ReadUInt32LittleEndian(bytes),
            BinaryPrimitives.ReadUInt32LittleEndian(bytes[4..]),
            BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]));
        error = (header.Flags & VhostUserFlags.VersionMask) != VhostUserFlags.Version ? VhostUserError.BadVersion
            : (header.Flags & VhostUserFlags.Reply) != 0 ? VhostUserError.UnexpectedReply
            : header.Size > MaxPayload ? VhostUserError.PayloadTooLarge
            : VhostUserError.None;
        return error == VhostUserError.None;
    }

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, (uint)Request);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], Size);
    }
}

/// <summary>vhost_vring_state {index u32, num u32} (SET_VRING_NUM, SET_VRING_BASE, GET_VRING_BASE, SET_VRING_ENABLE).</summary>
public readonly record struct VringState(uint Index, uint Num)
{
    public const int Length = 8;

    public static bool TryParse(ReadOnlySpan<byte> payload, out VringState state)
    {
        state = payload.Length < Length ? default
            : new VringState(BinaryPrimitives.ReadUInt32LittleEndian(payload), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]));
        return payload.Length >= Length;
    }

    public void Write(Span<byte> destination)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(destination, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], Num);
    }
}

/// <summary>
/// vhost_vring_addr {index u32, flags u32, descriptor u64, used u64, available u64, log u64}: note the order, used
/// before available. The three ring addresses are the frontend's user virtual addresses (vhost-user.rst, "Vring
/// address description").
/// </summary>
public readonly record struct VringAddress(uint Index, uint Flags, ulong Descriptor, ulong Used, ulong Available, ulong Log)
{
    public const int Length = 40;

    public static bool TryParse(ReadOnlySpan<byte> payload, out VringAddress address)
    {
        if (payload.Length < Length)
        {
            address = default;
            return false;
        }
        address = new VringAddress(
            BinaryPrimitives.ReadUInt32LittleEndian(payload), BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]),
            BinaryPrimitives.ReadUInt64LittleEndian(payload[8..]), BinaryPrimitives.ReadUInt64LittleEndian(payload[16..]),
            BinaryPrimitives.ReadUInt64LittleEndian(payload[24..]), BinaryPrimitives.ReadUInt64LittleEndian(payload[32..]));
        return true;
    }

    public void Write(Span<byte> d)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(d, Index);
        BinaryPrimitives.WriteUInt32LittleEndian(d[4..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], Descriptor);
        BinaryPrimitives.WriteUInt64LittleEndian(d[16..], Used);
        BinaryPrimitives.WriteUInt64LittleEndian(d[24..], Available);
        BinaryPrimitives.WriteUInt64LittleEndian(d[32..], Log);
    }
}

/// <summary>One memory region {guest_phys_addr, memory_size, userspace_addr, mmap_offset}, all u64.</summary>
public readonly record struct VhostMemoryRegion(ulong GuestPhysAddr, ulong MemorySize, ulong UserspaceAddr, ulong MmapOffset)
{
    public const int Length = 32;

    public void Write(Span<byte> d)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(d, GuestPhysAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], MemorySize);
        BinaryPrimitives.WriteUInt64LittleEndian(d[16..], UserspaceAddr);
        BinaryPrimitives.WriteUInt64LittleEndian(d[24..], MmapOffset);
    }
}

/// <summary>SET_MEM_TABLE's payload {num_regions u32, padding u32, regions[num]}, checked once up front.</summary>
public readonly ref struct VhostMemoryTable
{
    /// <summary>VHOST_MEMORY_BASELINE_NREGIONS: the most regions a table carries without CONFIGURE_MEM_SLOTS.</summary>
    public const int MaxRegions = 8;

    private readonly ReadOnlySpan<byte> _payload;

    private VhostMemoryTable(ReadOnlySpan<byte> payload, int count)
    {
        _payload = payload;
        Count = count;
    }

    public int Count { get; }

    public VhostMemoryRegion this[int i]
    {
        get
        {
            ReadOnlySpan<byte> r = _payload.Slice(8 + VhostMemoryRegion.Length * i, VhostMemoryRegion.Length);
            return new VhostMemoryRegion(BinaryPrimitives.ReadUInt64LittleEndian(r), BinaryPrimitives.ReadUInt64LittleEndian(r[8..]),
                BinaryPrimitives.ReadUInt64LittleEndian(r[16..]), BinaryPrimitives.ReadUInt64LittleEndian(r[24..]));
        }
    }

    public static bool TryParse(ReadOnlySpan<byte> payload, out VhostMemoryTable table, out VhostUserError error)
    {
        table = default;
        if (payload.Length < 8)
        {
            error = VhostUserError.ShortPayload;
            return false;
        }
        uint count = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        if (count > MaxRegions)
        {
            error = VhostUserError.TooManyRegions;
            return false;
        }
        if (payload.Length < 8 + VhostMemoryRegion.Length * (int)count)
        {
            error = VhostUserError.ShortPayload;
            return false;
        }
        table = new VhostMemoryTable(payload, (int)count);
        error = VhostUserError.None;
        return true;
    }

    public static int Write(Span<byte> d, ReadOnlySpan<VhostMemoryRegion> regions)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(d, (uint)regions.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(d[4..], 0);
        for (int i = 0; i < regions.Length; i++)
        {
            regions[i].Write(d[(8 + VhostMemoryRegion.Length * i)..]);
        }
        return 8 + VhostMemoryRegion.Length * regions.Length;
    }
}

/// <summary>GET_CONFIG / SET_CONFIG payload {offset u32, size u32, flags u32, payload[size]} (vhost-user.rst, "Device config space").</summary>
public readonly ref struct VhostConfigView
{
    public const int HeaderLength = 12;
    /// <summary>VHOST_USER_MAX_CONFIG_SIZE.</summary>
    public const int MaxSize = 256;

    private VhostConfigView(uint offset, uint size, uint flags, ReadOnlySpan<byte> data)
    {
        Offset = offset;
        Size = size;
        Flags = flags;
        Data = data;
    }

    public uint Offset { get; }

    public uint Size { get; }

    public uint Flags { get; }

    public ReadOnlySpan<byte> Data { get; }

    public static bool TryParse(ReadOnlySpan<byte> payload, out VhostConfigView view, out VhostUserError error)
    {
        view = default;
        if (payload.Length < HeaderLength)
        {
            error = VhostUserError.ShortPayload;
            return false;
        }
        uint offset = BinaryPrimitives.ReadUInt32LittleEndian(payload);
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(payload[4..]);
        uint flags = BinaryPrimitives.ReadUInt32LittleEndian(payload[8..]);
        if (size > MaxSize || offset > MaxSize || offset + size > MaxSize)
        {
            error = VhostUserError.BadConfigSize;
            return false;
        }
        if (payload.Length < HeaderLength + (int)size)
        {
            error = VhostUserError.ShortPayload;
            return false;
        }
        view = new VhostConfigView(offset, size, flags, payload.Slice(HeaderLength, (int)size));
        error = VhostUserError.None;
        return true;
    }
}

/// <summary>
/// The u64 of SET_VRING_KICK / CALL / ERR: ring index in bits 0-7, bit 8 set when no descriptor is sent
/// (vhost-user.rst: "invalid FD flag"; for KICK it means the ring is polled, which we do not support).
/// </summary>
public static class VringFdPayload
{
    public const ulong IndexMask = 0xFF, NoFd = 0x100;
}
