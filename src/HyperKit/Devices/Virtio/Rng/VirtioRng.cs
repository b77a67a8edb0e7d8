using Kit.HyperKit.Kvm;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio.Rng;

/// <summary>
/// virtio-rng (virtio 1.2, section 5.4): one request queue; the device fills each device-writable buffer with random
/// bytes from the host CSPRNG. Each request is capped at 64 KiB (overlapping descriptors could otherwise make one
/// request look enormous).
/// </summary>
public sealed class VirtioRng : VirtioDevice
{
    public const int MaxRequestBytes = 64 * 1024;
    private readonly DescriptorSegment[] _segments = new DescriptorSegment[SplitQueue.MaxSize];
    private readonly byte[] _buffer = new byte[4096];

    public override ushort DeviceType => 4;

    public override ulong DeviceFeatures => VirtioFeatures.Version1;

    public override int QueueCount => 1;

    public long BytesServed { get; private set; }

    public override void ReadConfig(int offset, Span<byte> data) => data.Clear();

    public override bool Process(int index, SplitQueue queue, GuestMemory memory)
    {
        bool used = false;
        while (queue.TryPop(_segments, out ushort head, out int count, out _, out long writable))
        {
            var cursor = new ChainCursor(_segments.AsSpan(0, count), memory);
            long remaining = Math.Min(writable, MaxRequestBytes);
            while (remaining > 0)
            {
                int n = (int)Math.Min(remaining, _buffer.Length);
                HostRandom.Fill(_buffer.AsSpan(0, n));
                cursor.Write(_buffer.AsSpan(0, n));
                remaining -= n;
            }
            BytesServed += cursor.Written;
            queue.PushUsed(head, cursor.Written);
            used = true;
        }
        return used;
    }
}
