using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio.Block;

/// <summary>
/// virtio-blk (virtio 1.2, section 5.2): one request queue; each request is a 16-byte readable header
/// {type u32, reserved u32, sector u64}, then data buffers, then a 1-byte device-writable status (OK 0, IOERR 1,
/// UNSUPP 2). Offers FLUSH, BLK_SIZE, SEG_MAX, DISCARD (hole punching) and RO for read-only images. Requests that
/// reach past the end of the disk, or whose shape is wrong, fail with IOERR; they never touch memory outside the
/// chain.
/// </summary>
public sealed class VirtioBlock : VirtioDevice
{
    public const uint TypeIn = 0, TypeOut = 1, TypeFlush = 4, TypeGetId = 8, TypeDiscard = 11;
    public const byte StatusOk = 0, StatusIoErr = 1, StatusUnsupported = 2;
    public const ulong FeatureSegMax = 1UL << 2, FeatureRo = 1UL << 5, FeatureBlkSize = 1UL << 6, FeatureFlush = 1UL << 9,
        FeatureDiscard = 1UL << 13;

    private const int SectorSize = 512;
    private const uint MaxDiscardSectors = 1u << 22; // 2 GiB per segment
    private const int MaxDiscardSegments = 16;
    private const int MaxIoBytes = 1 << 20; // per request; larger chains are failed, not allocated
    private readonly IBlockBackend _backend;
    private readonly DescriptorSegment[] _segments = new DescriptorSegment[SplitQueue.MaxSize];
    private readonly string _serial;

    public VirtioBlock(IBlockBackend backend, string serial = "kit-disk")
    {
        _backend = backend;
        _serial = serial;
    }

    public override ushort DeviceType => 2;

    public override ulong DeviceFeatures =>
        VirtioFeatures.Version1 | FeatureSegMax | FeatureBlkSize | FeatureFlush
        | (_backend.ReadOnly ? FeatureRo : FeatureDiscard);

    public override int QueueCount => 1;

    public ulong CapacitySectors => (ulong)_backend.Length / SectorSize;

    public long Requests { get; private set; }

    public long Errors { get; private set; }

    public override void ReadConfig(int offset, Span<byte> data)
    {
        // struct virtio_blk_config (virtio 1.2, 5.2.4), up to the discard fields.
        Span<byte> image = stackalloc byte[48];
        image.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(image, CapacitySectors);
        BinaryPrimitives.WriteUInt32LittleEndian(image[12..], SplitQueue.MaxSize - 2); // seg_max
        BinaryPrimitives.WriteUInt32LittleEndian(image[20..], SectorSize);             // blk_size
        BinaryPrimitives.WriteUInt16LittleEndian(image[34..], 1);                      // num_queues
        BinaryPrimitives.WriteUInt32LittleEndian(image[36..], MaxDiscardSectors);
        BinaryPrimitives.WriteUInt32LittleEndian(image[40..], MaxDiscardSegments);
        BinaryPrimitives.WriteUInt32LittleEndian(image[44..], 8);                      // discard alignment (4 KiB)
        ReadImage(image, offset, data);
    }

    public override bool Process(int index, SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        while (queue.TryPop(_segments, out ushort head, out int count, out long readable, out long writable))
        {
            Requests++;
            ReadOnlySpan<DescriptorSegment> chain = _segments.AsSpan(0, count);
            byte status = Handle(chain, memory, readable, writable, out uint dataWritten);
            if (status != StatusOk)
            {
                Errors++;
            }
            // The status byte is the last byte of the last (writable) descriptor.
            DescriptorSegment last = chain[^1];
            uint written = dataWritten;
            if (last.DeviceWritable && last.Length > 0 && memory.TryWrite(last.Address + last.Length - 1, [status]))
            {
                written++;
            }
            queue.PushUsed(head, written);
            used = true;
        }
        return used;
    }

    private byte Handle(ReadOnlySpan<DescriptorSegment> chain, GuestMemory memory, long readable, long writable, out uint dataWritten)
    {
        dataWritten = 0;
        DescriptorSegment last = chain[^1];
        if (readable < 16 || !last.DeviceWritable || last.Length < 1)
        {
            return StatusIoErr;
        }
        var cursor = new ChainCursor(chain, memory);
        Span<byte> header = stackalloc byte[16];
        cursor.Read(header);
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(header);
        ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(header[8..]);
        long dataIn = readable - 16;   // bytes the driver gives us (OUT)
        long dataOut = writable - 1;   // room for device-written data (IN), minus the status byte
        switch (type)
        {
            case TypeIn:
            {
                if (dataOut > MaxIoBytes || !InRange(sector, dataOut))
                {
                    return StatusIoErr;
                }
                byte[] buffer = ArrayPool<byte>.Shared.Rent((int)dataOut);
                try
                {
                    Span<byte> data = buffer.AsSpan(0, (int)dataOut);
                    if (!_backend.Read((long)sector * SectorSize, data))
                    {
                        return StatusIoErr;
                    }
                    cursor.Write(data);
                    dataWritten = cursor.Written;
                    return StatusOk;
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
            case TypeOut:
            {
                if (_backend.ReadOnly)
                {
                    return StatusIoErr;
                }
                if (dataIn > MaxIoBytes || !InRange(sector, dataIn))
                {
                    return StatusIoErr;
                }
                byte[] buffer = ArrayPool<byte>.Shared.Rent((int)dataIn);
                try
                {
                    Span<byte> data = buffer.AsSpan(0, (int)dataIn);
                    cursor.Read(data);
                    return _backend.Write((long)sector * SectorSize, data) ? StatusOk : StatusIoErr;
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
            case TypeFlush:
                return _backend.Flush() ? StatusOk : StatusIoErr;
            case TypeGetId:
            {
                // 20 bytes, NUL-padded if shorter (virtio 1.2, 5.2.6).
                Span<byte> id = stackalloc byte[20];
                id.Clear();
                Encoding.ASCII.GetBytes(_serial.AsSpan(0, Math.Min(_serial.Length, 20)), id);
                cursor.Write(id[..(int)Math.Min(20, dataOut)]);
                dataWritten = cursor.Written;
                return StatusOk;
            }
            case TypeDiscard:
            {
                if (_backend.ReadOnly)
                {
                    return StatusIoErr;
                }
                // Segments of {sector u64, num_sectors u32, flags u32}.
                if (dataIn % 16 != 0 || dataIn / 16 > MaxDiscardSegments)
                {
                    return StatusIoErr;
                }
                Span<byte> segment = stackalloc byte[16];
                for (long i = 0; i < dataIn / 16; i++)
                {
                    cursor.Read(segment);
                    ulong start = BinaryPrimitives.ReadUInt64LittleEndian(segment);
                    uint sectors = BinaryPrimitives.ReadUInt32LittleEndian(segment[8..]);
                    uint flags = BinaryPrimitives.ReadUInt32LittleEndian(segment[12..]);
                    if (flags != 0 && flags != 1 /* unmap hint */)
                    {
                        return StatusUnsupported;
                    }
                    if (sectors > MaxDiscardSectors || !InRange(start, (long)sectors * SectorSize))
                    {
                        return StatusIoErr;
                    }
                    if (!_backend.Discard((long)start * SectorSize, (long)sectors * SectorSize))
                    {
                        return StatusIoErr;
                    }
                }
                return StatusOk;
            }
            default:
                return StatusUnsupported;
        }
    }

    private bool InRange(ulong sector, long bytes) =>
        bytes >= 0 && bytes % SectorSize == 0 && sector <= CapacitySectors && (ulong)bytes / SectorSize <= CapacitySectors - sector;
}
