using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio;

/// <summary>Feature bits shared by all devices (virtio 1.2, section 6).</summary>
public static class VirtioFeatures
{
    public const ulong Version1 = 1UL << 32;

    /// <summary>
    /// VIRTIO_F_EVENT_IDX (bit 29): used_event/avail_event suppress interrupts and kicks (virtio 1.2, 2.7.7, 2.7.10).
    /// Offered by the transport for every device; KIT_VIRTIO_EVENT_IDX=0 withholds it (for A/B measurements).
    /// </summary>
    public const ulong EventIdx = 1UL << 29;
}

/// <summary>Device status bits (virtio 1.2, section 2.1).</summary>
public static class VirtioStatus
{
    public const byte Acknowledge = 1, Driver = 2, DriverOk = 4, FeaturesOk = 8, NeedsReset = 0x40, Failed = 0x80;
}

/// <summary>
/// The device-type half of a virtio device, independent of the transport: feature bits, a configuration space and
/// request processing on its queues. It sees guest memory and queues only, never KVM.
/// </summary>
public abstract class VirtioDevice
{
    /// <summary>Virtio device ID (4 entropy, 2 block, ...).</summary>
    public abstract ushort DeviceType { get; }

    public abstract ulong DeviceFeatures { get; }

    public abstract int QueueCount { get; }

    public virtual ushort QueueMaxSize => SplitQueue.MaxSize;

    /// <summary>Features the driver accepted (valid once FEATURES_OK is set).</summary>
    public ulong DriverFeatures { get; internal set; }

    /// <summary>Device-specific configuration space; reads beyond it return zeros.</summary>
    public abstract void ReadConfig(int offset, Span<byte> data);

    public virtual void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
    }

    /// <summary>
    /// Set by the transport: runs <see cref="Process"/> for a queue under the transport's lock, exactly as a driver
    /// kick would (nothing happens before DRIVER_OK). Devices with host-side events (a frame arrived, a reply came
    /// back) call it from their own threads so that completions and interrupts have one path.
    /// </summary>
    public Action<int> ProcessQueue { get; internal set; } = _ => { };

    /// <summary>Handles everything available on queue <paramref name="index"/>; returns true if buffers were used.</summary>
    public abstract bool Process(int index, SplitQueue queue, GuestMemory memory);

    /// <summary>Device counters for the KIT_VM_STATS report, or null when the device keeps none.</summary>
    public virtual string? Statistics => null;

    /// <summary>Device reset (status written 0): drop per-driver state.</summary>
    public virtual void Reset() => DriverFeatures = 0;

    /// <summary>Copies from a byte image of a config structure, zero-filling what lies beyond it.</summary>
    protected static void ReadImage(ReadOnlySpan<byte> image, int offset, Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            int o = offset + i;
            data[i] = o >= 0 && o < image.Length ? image[o] : (byte)0;
        }
    }
}

/// <summary>Sequential access to the readable and writable parts of one descriptor chain (guest memory checked).</summary>
public ref struct ChainCursor
{
    private readonly ReadOnlySpan<DescriptorSegment> _segments;
    private readonly GuestMemory _memory;
    private int _readSegment;
    private uint _readOffset;
    private int _writeSegment;
    private uint _writeOffset;

    public ChainCursor(ReadOnlySpan<DescriptorSegment> segments, GuestMemory memory)
    {
        _segments = segments;
        _memory = memory;
        _readSegment = 0;
        _writeSegment = 0;
        while (_writeSegment < segments.Length && !segments[_writeSegment].DeviceWritable)
        {
            _writeSegment++;
        }
        Written = 0;
    }

    /// <summary>Bytes written into the chain so far (what the used ring reports).</summary>
    public uint Written { get; private set; }

    /// <summary>Copies up to destination.Length readable bytes; returns how many were available.</summary>
    public int Read(scoped Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length && _readSegment < _segments.Length && !_segments[_readSegment].DeviceWritable)
        {
            DescriptorSegment s = _segments[_readSegment];
            int n = (int)Math.Min((uint)(destination.Length - done), s.Length - _readOffset);
            if (n > 0 && _memory.TryGetSpan(s.Address + _readOffset, n, out Span<byte> src))
            {
                src.CopyTo(destination[done..]);
            }
            done += n;
            _readOffset += (uint)n;
            if (_readOffset >= s.Length)
            {
                _readSegment++;
                _readOffset = 0;
            }
        }
        return done;
    }

    /// <summary>Copies into the writable part; returns how many bytes fitted.</summary>
    public int Write(scoped ReadOnlySpan<byte> source)
    {
        int done = 0;
        while (done < source.Length && _writeSegment < _segments.Length)
        {
            DescriptorSegment s = _segments[_writeSegment];
            int n = (int)Math.Min((uint)(source.Length - done), s.Length - _writeOffset);
            if (n > 0 && _memory.TryGetSpan(s.Address + _writeOffset, n, out Span<byte> dst))
            {
                source.Slice(done, n).CopyTo(dst);
            }
            done += n;
            _writeOffset += (uint)n;
            if (_writeOffset >= s.Length)
            {
                _writeSegment++;
                _writeOffset = 0;
            }
        }
        Written += (uint)done;
        return done;
    }
}
