using System.Buffers.Binary;
using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

/// <summary>Records MSI messages and level changes.</summary>
internal sealed class RecordingMsi : IMsiSink
{
    public List<(ulong Address, uint Data)> Messages { get; } = [];

    public void Signal(ulong address, uint data) => Messages.Add((address, data));
}

internal sealed class RecordingLine : IInterruptLine
{
    public bool Level { get; private set; }

    public int Raised { get; private set; }

    public void SetLevel(bool high)
    {
        if (high && !Level)
        {
            Raised++;
        }
        Level = high;
    }
}

/// <summary>
/// A scripted guest driver for one split virtqueue living in fake guest memory: descriptor table at Desc, avail ring
/// at Avail, used ring at Used; it can post well-formed chains or raw hostile descriptors.
/// </summary>
internal sealed class QueueDriver(GuestMemory memory, ushort size, ulong desc = 0x1000, ulong avail = 0x2000, ulong used = 0x3000)
{
    private ushort _availIdx;
    private ushort _nextDesc;

    public GuestMemory Memory { get; } = memory;

    public ushort Size { get; } = size;

    public ulong Desc { get; } = desc;

    public ulong Avail { get; } = avail;

    public ulong Used { get; } = used;

    public void Configure(SplitQueue queue)
    {
        queue.Size = Size;
        queue.DescTable = Desc;
        queue.AvailRing = Avail;
        queue.UsedRing = Used;
        queue.Enabled = true;
    }

    public void WriteDescriptor(ushort index, ulong addr, uint len, ushort flags, ushort next)
    {
        ulong e = Desc + 16UL * index;
        Memory.TryWriteU64(e, addr);
        Memory.TryWriteU32(e + 8, len);
        Memory.TryWriteU16(e + 12, flags);
        Memory.TryWriteU16(e + 14, next);
    }

    /// <summary>Makes head available (avail ring entry then idx, as a driver must order them).</summary>
    public void Publish(ushort head)
    {
        Memory.TryWriteU16(Avail + 4 + 2UL * (ushort)(_availIdx % Size), head);
        _availIdx++;
        Memory.TryWriteU16(Avail + 2, _availIdx);
    }

    public void SetAvailIdx(ushort idx)
    {
        _availIdx = idx;
        Memory.TryWriteU16(Avail + 2, idx);
    }

    public void SetNoInterrupt(bool on) => Memory.TryWriteU16(Avail, on ? (ushort)1 : (ushort)0);

    /// <summary>Posts a chain of (address, length, writable) buffers; returns the head index.</summary>
    public ushort Post(params (ulong Addr, uint Len, bool Write)[] buffers)
    {
        ushort head = _nextDesc;
        for (int i = 0; i < buffers.Length; i++)
        {
            ushort index = (ushort)((head + i) % Size);
            bool last = i == buffers.Length - 1;
            WriteDescriptor(index, buffers[i].Addr, buffers[i].Len,
                (ushort)((last ? 0 : 1) | (buffers[i].Write ? 2 : 0)), (ushort)((index + 1) % Size));
        }
        _nextDesc = (ushort)((head + buffers.Length) % Size);
        Publish(head);
        return head;
    }

    public ushort UsedIdx
    {
        get
        {
            Memory.TryReadU16(Used + 2, out ushort v);
            return v;
        }
    }

    public (uint Id, uint Len) UsedEntry(int n)
    {
        ulong slot = Used + 4 + 8UL * (ulong)(n % Size);
        Memory.TryReadU32(slot, out uint id);
        Memory.TryReadU32(slot + 4, out uint len);
        return (id, len);
    }
}

/// <summary>Drives a PCI bus through config mechanism #1 exactly as a guest would (ports 0xCF8/0xCFC).</summary>
internal sealed class ConfigDriver(PciBus bus)
{
    public uint Read32(int slot, int register)
    {
        Select(slot, register);
        Span<byte> data = stackalloc byte[4];
        bus.Read(PciBus.ConfigDataPort, data);
        return BinaryPrimitives.ReadUInt32LittleEndian(data);
    }

    public byte Read8(int slot, int register)
    {
        Select(slot, register & ~3);
        Span<byte> data = stackalloc byte[1];
        bus.Read((ushort)(PciBus.ConfigDataPort + (register & 3)), data);
        return data[0];
    }

    public void Write32(int slot, int register, uint value)
    {
        Select(slot, register);
        Span<byte> data = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(data, value);
        bus.Write(PciBus.ConfigDataPort, data);
    }

    public void Write8(int slot, int register, byte value)
    {
        Select(slot, register & ~3);
        bus.Write((ushort)(PciBus.ConfigDataPort + (register & 3)), [value]);
    }

    public void Select(int slot, int register, int function = 0, int busNumber = 0)
    {
        Span<byte> data = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(data,
            0x8000_0000u | (uint)(busNumber << 16) | (uint)(slot << 11) | (uint)(function << 8) | (uint)(register & 0xFC));
        bus.Write(PciBus.ConfigAddressPort, data);
    }
}

/// <summary>
/// A scripted virtio-pci modern driver: walks the capability list like Linux's virtio_pci_modern, negotiates
/// features, programs queue 0 and MSI-X, and kicks through the notify doorbell, all through bus accesses.
/// </summary>
internal sealed class VirtioPciDriver
{
    private readonly MmioBus _mmio;

    public VirtioPciDriver(PciBus bus, MmioBus mmio, int slot)
    {
        Pci = new ConfigDriver(bus);
        _mmio = mmio;
        Slot = slot;
        Bar = Pci.Read32(slot, 0x10) & ~0xFu;
        // Enable memory decoding and bus mastering.
        Pci.Write32(slot, 0x04, 0x0006);
        int cap = Pci.Read8(slot, 0x34);
        int guard = 0;
        while (cap != 0 && guard++ < 48)
        {
            byte id = Pci.Read8(slot, cap);
            if (id == 0x09)
            {
                byte type = Pci.Read8(slot, cap + 3);
                uint offset = Pci.Read32(slot, cap + 8);
                switch (type)
                {
                    case 1: Common = Bar + offset; break;
                    case 2: Notify = Bar + offset; NotifyMultiplier = Pci.Read32(slot, cap + 16); break;
                    case 3: Isr = Bar + offset; break;
                    case 4: DeviceCfg = Bar + offset; break;
                }
            }
            else if (id == 0x11)
            {
                MsixCap = cap;
                MsixTable = Bar + (Pci.Read32(slot, cap + 4) & ~7u);
            }
            cap = Pci.Read8(slot, cap + 1);
        }
    }

    public ConfigDriver Pci { get; }

    public int Slot { get; }

    public uint Bar { get; }

    public ulong Common { get; }

    public ulong Notify { get; }

    public uint NotifyMultiplier { get; }

    public ulong Isr { get; }

    public ulong DeviceCfg { get; }

    public int MsixCap { get; }

    public ulong MsixTable { get; }

    public uint ReadMmio32(ulong address)
    {
        Span<byte> d = stackalloc byte[4];
        _mmio.Read(address, d);
        return BinaryPrimitives.ReadUInt32LittleEndian(d);
    }

    public ushort ReadMmio16(ulong address)
    {
        Span<byte> d = stackalloc byte[2];
        _mmio.Read(address, d);
        return BinaryPrimitives.ReadUInt16LittleEndian(d);
    }

    public byte ReadMmio8(ulong address)
    {
        Span<byte> d = stackalloc byte[1];
        _mmio.Read(address, d);
        return d[0];
    }

    public void WriteMmio32(ulong address, uint value)
    {
        Span<byte> d = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(d, value);
        _mmio.Write(address, d);
    }

    public void WriteMmio16(ulong address, ushort value)
    {
        Span<byte> d = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(d, value);
        _mmio.Write(address, d);
    }

    public void WriteMmio8(ulong address, byte value) => _mmio.Write(address, [value]);

    public ulong DeviceFeatures()
    {
        WriteMmio32(Common + 0, 0);
        ulong lo = ReadMmio32(Common + 4);
        WriteMmio32(Common + 0, 1);
        ulong hi = ReadMmio32(Common + 4);
        return lo | (hi << 32);
    }

    public byte Status
    {
        get => ReadMmio8(Common + 20);
        set => WriteMmio8(Common + 20, value);
    }

    /// <summary>Reset, ACK, DRIVER, features, FEATURES_OK; returns whether the device accepted the features.</summary>
    public bool Negotiate(ulong features)
    {
        Status = 0;
        Status = VirtioStatus.Acknowledge;
        Status = VirtioStatus.Acknowledge | VirtioStatus.Driver;
        WriteMmio32(Common + 8, 0);
        WriteMmio32(Common + 12, (uint)features);
        WriteMmio32(Common + 8, 1);
        WriteMmio32(Common + 12, (uint)(features >> 32));
        Status = VirtioStatus.Acknowledge | VirtioStatus.Driver | VirtioStatus.FeaturesOk;
        return (Status & VirtioStatus.FeaturesOk) != 0;
    }

    public void SetupQueue(int index, QueueDriver q, ushort vector)
    {
        WriteMmio16(Common + 22, (ushort)index);
        WriteMmio16(Common + 24, q.Size);
        WriteMmio32(Common + 32, (uint)q.Desc);
        WriteMmio32(Common + 36, (uint)(q.Desc >> 32));
        WriteMmio32(Common + 40, (uint)q.Avail);
        WriteMmio32(Common + 44, 0);
        WriteMmio32(Common + 48, (uint)q.Used);
        WriteMmio32(Common + 52, 0);
        WriteMmio16(Common + 26, vector);
        WriteMmio16(Common + 28, 1);
    }

    public void ProgramVector(int vector, ulong address, uint data, bool masked = false)
    {
        ulong e = MsixTable + 16UL * (ulong)vector;
        WriteMmio32(e, (uint)address);
        WriteMmio32(e + 4, (uint)(address >> 32));
        WriteMmio32(e + 8, data);
        WriteMmio32(e + 12, masked ? 1u : 0u);
    }

    public void EnableMsix(bool enable = true, bool functionMask = false) =>
        Pci.Write8(Slot, MsixCap + 3, (byte)((enable ? 0x80 : 0) | (functionMask ? 0x40 : 0)));

    public void DriverOk() => Status = (byte)(Status | VirtioStatus.DriverOk);

    public void Kick(int queue)
    {
        WriteMmio16(Common + 22, (ushort)queue);
        ushort off = ReadMmio16(Common + 30);
        WriteMmio16(Notify + (ulong)off * NotifyMultiplier, (ushort)queue);
    }
}
