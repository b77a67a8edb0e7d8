using System.Buffers.Binary;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Devices.Virtio;

/// <summary>
/// The virtio-over-PCI modern transport (virtio 1.2, section 4.1): a non-transitional function (device ID
/// 0x1040 + type, revision 1) with one 32 KiB memory BAR holding the common configuration, ISR, device configuration,
/// notification doorbells and the MSI-X table/PBA, each announced by a vendor-specific capability. Interrupts are MSI-X
/// only (one vector for configuration changes and one per queue as the driver assigns them).
/// </summary>
public sealed class VirtioPciDevice : PciFunction
{
    public const uint BarLength = 0x8000;
    public const uint CommonOffset = 0x0000, IsrOffset = 0x1000, DeviceCfgOffset = 0x2000, NotifyOffset = 0x3000,
        MsixTableOffset = 0x4000, MsixPbaOffset = 0x5000;
    public const uint NotifyMultiplier = 4;
    private const int CommonSize = 0x40;
    private const ushort NoVector = 0xFFFF;

    private readonly Lock _lock = new();
    private readonly GuestMemory _memory;
    private readonly IMsiSink _msi;
    private readonly SplitQueue[] _queues;
    private readonly byte[] _msixTable;
    private readonly ulong[] _msixPending;
    private readonly int _msixCapability;
    private uint _deviceFeatureSelect, _driverFeatureSelect;
    private ulong _driverFeatures;
    private ushort _msixConfig = NoVector;
    private byte _status;
    private byte _configGeneration;
    private ushort _queueSelect;
    private byte _isr;

    public VirtioPciDevice(VirtioDevice device, GuestMemory memory, IMsiSink msi, uint barAddress)
        : base(0x1AF4, (ushort)(0x1040 + device.DeviceType), ClassFor(device.DeviceType), 1, 0x1AF4, 0x40)
    {
        Device = device;
        device.ProcessQueue = Notify;
        _memory = memory;
        _msi = msi;
        _queues = new SplitQueue[device.QueueCount];
        for (int i = 0; i < _queues.Length; i++)
        {
            _queues[i] = new SplitQueue(memory, device.QueueMaxSize);
        }
        VectorCount = device.QueueCount + 1;
        _msixTable = new byte[16 * VectorCount];
        _msixPending = new ulong[(VectorCount + 63) / 64];
        for (int v = 0; v < VectorCount; v++)
        {
            _msixTable[16 * v + 12] = 1; // vector control: masked at reset
        }
        DefineMemoryBar(0, BarLength, barAddress);
        AddVirtioCapability(1, CommonOffset, CommonSize);
        AddVirtioCapability(3, IsrOffset, 4);
        AddVirtioCapability(4, DeviceCfgOffset, 0x1000);
        AddVirtioCapability(2, NotifyOffset, (uint)(NotifyMultiplier * _queues.Length), NotifyMultiplier);
        Span<byte> msix = stackalloc byte[10];
        BinaryPrimitives.WriteUInt16LittleEndian(msix, (ushort)(VectorCount - 1)); // table size - 1
        BinaryPrimitives.WriteUInt32LittleEndian(msix[2..], MsixTableOffset);     // BIR 0
        BinaryPrimitives.WriteUInt32LittleEndian(msix[6..], MsixPbaOffset);       // BIR 0
        _msixCapability = AddCapability(0x11, msix);
        SetWriteMask(_msixCapability + 3, [0xC0]); // MSI-X enable (bit 15) and function mask (bit 14)
    }

    public VirtioDevice Device { get; }

    private static readonly bool OfferEventIdx = Environment.GetEnvironmentVariable("KIT_VIRTIO_EVENT_IDX") != "0";

    /// <summary>The device's features plus the transport's own (ring features such as EVENT_IDX).</summary>
    public ulong OfferedFeatures => Device.DeviceFeatures | (OfferEventIdx ? VirtioFeatures.EventIdx : 0);

    public int VectorCount { get; }

    public byte Status
    {
        get
        {
            lock (_lock)
            {
                return _status;
            }
        }
    }

    public SplitQueue Queue(int index) => _queues[index];

    /// <summary>Interrupts the device wanted to send while its vector was masked or MSI-X was off.</summary>
    public long SuppressedInterrupts { get; private set; }

    private bool MsixEnabled => (Config[_msixCapability + 3] & 0x80) != 0;

    private bool MsixFunctionMasked => (Config[_msixCapability + 3] & 0x40) != 0;

    private static uint ClassFor(ushort type) => type switch
    {
        1 => 0x020000, // network controller
        2 => 0x018000, // mass storage, other
        _ => 0xFF0000, // unassigned class
    };

    private void AddVirtioCapability(byte cfgType, uint offset, uint length, uint? multiplier = null)
    {
        // struct virtio_pci_cap after {cap_vndr, cap_next}: cap_len, cfg_type, bar, id, padding[2], offset, length
        // (+ notify_off_multiplier for the notification capability).
        Span<byte> body = stackalloc byte[multiplier.HasValue ? 18 : 14];
        body.Clear();
        body[0] = (byte)(body.Length + 2);
        body[1] = cfgType;
        body[2] = 0;
        BinaryPrimitives.WriteUInt32LittleEndian(body[6..], offset);
        BinaryPrimitives.WriteUInt32LittleEndian(body[10..], length);
        if (multiplier.HasValue)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(body[14..], multiplier.Value);
        }
        AddCapability(0x09, body);
    }

    protected override void OnConfigWritten(int offset, int length)
    {
        // Unmasking (function mask or enable) may release pending MSI-X messages.
        if (offset <= _msixCapability + 3 && offset + length > _msixCapability + 2)
        {
            DeliverPending();
        }
    }

    public override void BarRead(int bar, ulong offset, Span<byte> data)
    {
        lock (_lock)
        {
            data.Clear();
            if (offset < CommonOffset + CommonSize)
            {
                Span<byte> image = stackalloc byte[CommonSize];
                BuildCommonImage(image);
                CopyOut(image, (int)offset, data);
            }
            else if (offset >= IsrOffset && offset < IsrOffset + 4)
            {
                // Reading the ISR clears it (virtio 1.2, 4.1.4.5).
                if (offset == IsrOffset)
                {
                    data[0] = _isr;
                    _isr = 0;
                }
            }
            else if (offset >= DeviceCfgOffset && offset < DeviceCfgOffset + 0x1000)
            {
                Device.ReadConfig((int)(offset - DeviceCfgOffset), data);
            }
            else if (offset >= MsixTableOffset && offset < MsixTableOffset + (ulong)_msixTable.Length)
            {
                CopyOut(_msixTable, (int)(offset - MsixTableOffset), data);
            }
            else if (offset >= MsixPbaOffset && offset < MsixPbaOffset + 8UL * (ulong)_msixPending.Length)
            {
                Span<byte> pba = stackalloc byte[8 * _msixPending.Length];
                for (int i = 0; i < _msixPending.Length; i++)
                {
                    BinaryPrimitives.WriteUInt64LittleEndian(pba[(8 * i)..], _msixPending[i]);
                }
                CopyOut(pba, (int)(offset - MsixPbaOffset), data);
            }
        }
    }

    public override void BarWrite(int bar, ulong offset, ReadOnlySpan<byte> data)
    {
        int notifyQueue = -1;
        lock (_lock)
        {
            if (offset < CommonOffset + CommonSize)
            {
                WriteCommon((int)offset, data);
            }
            else if (offset >= DeviceCfgOffset && offset < DeviceCfgOffset + 0x1000)
            {
                Device.WriteConfig((int)(offset - DeviceCfgOffset), data);
            }
            else if (offset >= NotifyOffset && offset < NotifyOffset + NotifyMultiplier * (ulong)_queues.Length)
            {
                notifyQueue = (int)((offset - NotifyOffset) / NotifyMultiplier);
            }
            else if (offset >= MsixTableOffset && offset < MsixTableOffset + (ulong)_msixTable.Length)
            {
                int o = (int)(offset - MsixTableOffset);
                for (int i = 0; i < data.Length && o + i < _msixTable.Length; i++)
                {
                    _msixTable[o + i] = data[i];
                }
                DeliverPending();
            }
            // ISR and PBA are read-only; writes elsewhere in the BAR are ignored.
        }
        if (notifyQueue >= 0)
        {
            Notify(notifyQueue);
        }
    }

    /// <summary>The driver kicked queue <paramref name="index"/> (doorbell write or ioeventfd): process it.</summary>
    public void Notify(int index)
    {
        lock (_lock)
        {
            if ((uint)index >= (uint)_queues.Length || (_status & VirtioStatus.DriverOk) == 0 || (_status & VirtioStatus.NeedsReset) != 0)
            {
                return;
            }
            SplitQueue queue = _queues[index];
            bool used = Device.Process(index, queue, _memory);
            if (queue.Broken != QueueError.None)
            {
                // The driver corrupted this queue: stop the device until it resets it (virtio 1.2, 2.1.2).
                _status |= VirtioStatus.NeedsReset;
                _configGeneration++;
                RaiseConfigInterrupt();
                return;
            }
            if (used && queue.ShouldInterrupt())
            {
                _isr |= 1;
                SendVector(queue.MsixVector);
            }
        }
    }

    /// <summary>Per-queue notification counters and the device's own, one line each (KIT_VM_STATS=1).</summary>
    public void WriteStatistics(TextWriter output)
    {
        lock (_lock)
        {
            string name = $"virtio type {Device.DeviceType}";
            for (int i = 0; i < _queues.Length; i++)
            {
                SplitQueue q = _queues[i];
                output.WriteLine($"kit: vm stats: {name} queue {i}: {q.UsedEntries} used, {q.InterruptsWanted} interrupts, "
                    + $"{q.InterruptsSkipped} suppressed by the driver, {q.KickRequests} kick requests (event idx {(OfferEventIdx ? "offered" : "withheld")})");
            }
            if (Device.Statistics is string stats)
            {
                output.WriteLine($"kit: vm stats: {name}: {stats}");
            }
        }
    }

    private void RaiseConfigInterrupt()
    {
        _isr |= 2;
        SendVector(_msixConfig);
    }

    private void SendVector(ushort vector)
    {
        if (vector >= VectorCount)
        {
            SuppressedInterrupts++;
            return;
        }
        if (!MsixEnabled || MsixFunctionMasked || (_msixTable[16 * vector + 12] & 1) != 0)
        {
            _msixPending[vector / 64] |= 1UL << (vector % 64);
            SuppressedInterrupts++;
            return;
        }
        ulong address = BinaryPrimitives.ReadUInt64LittleEndian(_msixTable.AsSpan(16 * vector));
        uint data = BinaryPrimitives.ReadUInt32LittleEndian(_msixTable.AsSpan(16 * vector + 8));
        _msi.Signal(address, data);
    }

    private void DeliverPending()
    {
        if (!MsixEnabled || MsixFunctionMasked)
        {
            return;
        }
        for (int v = 0; v < VectorCount; v++)
        {
            ulong bit = 1UL << (v % 64);
            if ((_msixPending[v / 64] & bit) != 0 && (_msixTable[16 * v + 12] & 1) == 0)
            {
                _msixPending[v / 64] &= ~bit;
                SendVector((ushort)v);
            }
        }
    }

    private SplitQueue? SelectedQueue => _queueSelect < _queues.Length ? _queues[_queueSelect] : null;

    private void BuildCommonImage(Span<byte> image)
    {
        // struct virtio_pci_common_cfg (virtio 1.2, 4.1.4.3).
        image.Clear();
        ulong features = OfferedFeatures;
        BinaryPrimitives.WriteUInt32LittleEndian(image, _deviceFeatureSelect);
        BinaryPrimitives.WriteUInt32LittleEndian(image[4..], _deviceFeatureSelect switch
        {
            0 => (uint)features,
            1 => (uint)(features >> 32),
            _ => 0,
        });
        BinaryPrimitives.WriteUInt32LittleEndian(image[8..], _driverFeatureSelect);
        BinaryPrimitives.WriteUInt32LittleEndian(image[12..], _driverFeatureSelect switch
        {
            0 => (uint)_driverFeatures,
            1 => (uint)(_driverFeatures >> 32),
            _ => 0,
        });
        BinaryPrimitives.WriteUInt16LittleEndian(image[16..], _msixConfig);
        BinaryPrimitives.WriteUInt16LittleEndian(image[18..], (ushort)_queues.Length);
        image[20] = _status;
        image[21] = _configGeneration;
        BinaryPrimitives.WriteUInt16LittleEndian(image[22..], _queueSelect);
        SplitQueue? q = SelectedQueue;
        if (q is not null)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(image[24..], q.Size);
            BinaryPrimitives.WriteUInt16LittleEndian(image[26..], q.MsixVector);
            BinaryPrimitives.WriteUInt16LittleEndian(image[28..], q.Enabled ? (ushort)1 : (ushort)0);
            BinaryPrimitives.WriteUInt16LittleEndian(image[30..], _queueSelect); // queue_notify_off
            BinaryPrimitives.WriteUInt64LittleEndian(image[32..], q.DescTable);
            BinaryPrimitives.WriteUInt64LittleEndian(image[40..], q.AvailRing);
            BinaryPrimitives.WriteUInt64LittleEndian(image[48..], q.UsedRing);
            BinaryPrimitives.WriteUInt16LittleEndian(image[56..], _queueSelect); // queue_notify_data
        }
    }

    private void WriteCommon(int offset, ReadOnlySpan<byte> data)
    {
        Span<byte> image = stackalloc byte[CommonSize];
        BuildCommonImage(image);
        int end = Math.Min(offset + data.Length, CommonSize);
        if (offset >= end)
        {
            return;
        }
        data[..(end - offset)].CopyTo(image[offset..]);
        bool Touches(int start, int length) => offset < start + length && end > start;

        if (Touches(0, 4))
        {
            _deviceFeatureSelect = BinaryPrimitives.ReadUInt32LittleEndian(image);
        }
        if (Touches(8, 4))
        {
            _driverFeatureSelect = BinaryPrimitives.ReadUInt32LittleEndian(image[8..]);
        }
        if (Touches(12, 4) && (_status & VirtioStatus.FeaturesOk) == 0)
        {
            uint value = BinaryPrimitives.ReadUInt32LittleEndian(image[12..]);
            if (_driverFeatureSelect == 0)
            {
                _driverFeatures = (_driverFeatures & 0xFFFF_FFFF_0000_0000) | value;
            }
            else if (_driverFeatureSelect == 1)
            {
                _driverFeatures = (_driverFeatures & 0xFFFF_FFFF) | ((ulong)value << 32);
            }
        }
        if (Touches(16, 2))
        {
            ushort v = BinaryPrimitives.ReadUInt16LittleEndian(image[16..]);
            _msixConfig = v < VectorCount ? v : NoVector;
        }
        if (Touches(20, 1))
        {
            WriteStatus(image[20]);
        }
        if (Touches(22, 2))
        {
            _queueSelect = BinaryPrimitives.ReadUInt16LittleEndian(image[22..]);
        }
        SplitQueue? q = SelectedQueue;
        if (q is null)
        {
            return;
        }
        if (!q.Enabled)
        {
            // Queue layout may change only while the queue is disabled (virtio 1.2, 4.1.4.3.2).
            if (Touches(24, 2))
            {
                q.Size = BinaryPrimitives.ReadUInt16LittleEndian(image[24..]);
            }
            if (Touches(32, 8))
            {
                q.DescTable = BinaryPrimitives.ReadUInt64LittleEndian(image[32..]);
            }
            if (Touches(40, 8))
            {
                q.AvailRing = BinaryPrimitives.ReadUInt64LittleEndian(image[40..]);
            }
            if (Touches(48, 8))
            {
                q.UsedRing = BinaryPrimitives.ReadUInt64LittleEndian(image[48..]);
            }
        }
        if (Touches(26, 2))
        {
            ushort v = BinaryPrimitives.ReadUInt16LittleEndian(image[26..]);
            q.MsixVector = v < VectorCount ? v : NoVector;
        }
        if (Touches(28, 2) && BinaryPrimitives.ReadUInt16LittleEndian(image[28..]) == 1)
        {
            q.Enabled = true;
        }
    }

    private void WriteStatus(byte value)
    {
        if (value == 0)
        {
            Reset();
            return;
        }
        if ((value & VirtioStatus.FeaturesOk) != 0 && (_status & VirtioStatus.FeaturesOk) == 0)
        {
            // Accept only a subset of what we offered, and VERSION_1 is mandatory for a modern device.
            bool ok = (_driverFeatures & ~OfferedFeatures) == 0 && (_driverFeatures & VirtioFeatures.Version1) != 0;
            if (!ok)
            {
                value &= unchecked((byte)~VirtioStatus.FeaturesOk);
            }
            else
            {
                Device.DriverFeatures = _driverFeatures;
                foreach (SplitQueue q in _queues)
                {
                    q.EventIdx = (_driverFeatures & VirtioFeatures.EventIdx) != 0;
                }
            }
        }
        // The driver cannot clear NEEDS_RESET except by a reset.
        _status = (byte)(value | (_status & VirtioStatus.NeedsReset));
    }

    private void Reset()
    {
        _status = 0;
        _driverFeatures = 0;
        _deviceFeatureSelect = _driverFeatureSelect = 0;
        _msixConfig = NoVector;
        _queueSelect = 0;
        _isr = 0;
        foreach (SplitQueue q in _queues)
        {
            q.Reset();
        }
        Device.Reset();
    }

    private static void CopyOut(ReadOnlySpan<byte> image, int offset, Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            int o = offset + i;
            data[i] = o >= 0 && o < image.Length ? image[o] : (byte)0;
        }
    }
}
