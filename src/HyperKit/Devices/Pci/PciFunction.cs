using System.Buffers.Binary;

namespace Kit.HyperKit.Devices.Pci;

/// <summary>
/// One PCI function's type-0 configuration space (PCI Local Bus 3.0, section 6.1) and its memory BARs. The guest may
/// write anything anywhere; only bits set in the write mask change, BARs follow the sizing protocol (write all ones,
/// read back the size mask), and subclasses see capability writes through <see cref="OnConfigWritten"/>.
/// </summary>
public abstract class PciFunction
{
    public const int ConfigSize = 256;
    private const int CommandOffset = 0x04;
    private const int Bar0Offset = 0x10;
    private const ushort CommandMemory = 0x02;

    protected readonly byte[] Config = new byte[ConfigSize];
    private readonly byte[] _writeMask = new byte[ConfigSize];
    private readonly uint[] _barSizes = new uint[6];
    private byte _nextCapability = 0x40;
    private byte _lastCapability;

    protected PciFunction(ushort vendorId, ushort deviceId, uint classCode, byte revision, ushort subsystemVendor, ushort subsystemId)
    {
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(0x00), vendorId);
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(0x02), deviceId);
        Config[0x08] = revision;
        Config[0x09] = (byte)classCode;
        Config[0x0A] = (byte)(classCode >> 8);
        Config[0x0B] = (byte)(classCode >> 16);
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(0x2C), subsystemVendor);
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(0x2E), subsystemId);
        // Command: I/O space, memory space, bus master, INTx disable are writable.
        BinaryPrimitives.WriteUInt16LittleEndian(_writeMask.AsSpan(CommandOffset), 0x0407);
        _writeMask[0x0C] = 0xFF; // cache line size
        _writeMask[0x0D] = 0xFF; // latency timer
        _writeMask[0x3C] = 0xFF; // interrupt line
    }

    /// <summary>Memory BAR i as currently programmed (base address), or 0 when absent.</summary>
    public uint BarAddress(int bar) => _barSizes[bar] == 0 ? 0 : BinaryPrimitives.ReadUInt32LittleEndian(Config.AsSpan(Bar0Offset + 4 * bar)) & ~0xFu;

    public uint BarSize(int bar) => _barSizes[bar];

    public bool MemoryEnabled => (BinaryPrimitives.ReadUInt16LittleEndian(Config.AsSpan(CommandOffset)) & CommandMemory) != 0;

    public ushort Command => BinaryPrimitives.ReadUInt16LittleEndian(Config.AsSpan(CommandOffset));

    /// <summary>Declares a 32-bit non-prefetchable memory BAR of a power-of-two size at an initial address.</summary>
    protected void DefineMemoryBar(int bar, uint size, uint address)
    {
        if (size < 16 || (size & (size - 1)) != 0 || (address & (size - 1)) != 0)
        {
            throw new ArgumentException("BAR size must be a power of two >= 16 and the address aligned to it");
        }
        _barSizes[bar] = size;
        BinaryPrimitives.WriteUInt32LittleEndian(Config.AsSpan(Bar0Offset + 4 * bar), address);
        BinaryPrimitives.WriteUInt32LittleEndian(_writeMask.AsSpan(Bar0Offset + 4 * bar), ~(size - 1));
    }

    /// <summary>Appends a capability (id, then body after the next pointer) and returns its config-space offset.</summary>
    protected int AddCapability(byte id, ReadOnlySpan<byte> body)
    {
        int offset = _nextCapability;
        int length = 2 + body.Length;
        if (offset + length > ConfigSize)
        {
            throw new InvalidOperationException("PCI capabilities do not fit in config space");
        }
        Config[offset] = id;
        Config[offset + 1] = 0;
        body.CopyTo(Config.AsSpan(offset + 2));
        if (_lastCapability == 0)
        {
            Config[0x34] = (byte)offset;
            Config[0x06] |= 0x10; // status: capabilities list present
        }
        else
        {
            Config[_lastCapability + 1] = (byte)offset;
        }
        _lastCapability = (byte)offset;
        _nextCapability = (byte)((offset + length + 3) & ~3);
        return offset;
    }

    /// <summary>Makes bits of config space guest-writable (for capability registers).</summary>
    protected void SetWriteMask(int offset, ReadOnlySpan<byte> mask) => mask.CopyTo(_writeMask.AsSpan(offset));

    /// <summary>Reads config space; reads beyond 256 bytes return zeros (no extended config space).</summary>
    public void ReadConfig(int offset, Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            int o = offset + i;
            data[i] = o >= 0 && o < ConfigSize ? Config[o] : (byte)0;
        }
    }

    /// <summary>Applies a guest config write through the write mask; out-of-range bytes are dropped.</summary>
    public void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        bool any = false;
        for (int i = 0; i < data.Length; i++)
        {
            int o = offset + i;
            if (o < 0 || o >= ConfigSize)
            {
                continue;
            }
            byte mask = _writeMask[o];
            byte updated = (byte)((Config[o] & ~mask) | (data[i] & mask));
            if (updated != Config[o])
            {
                Config[o] = updated;
                any = true;
            }
        }
        if (any || data.Length > 0)
        {
            OnConfigWritten(offset, data.Length);
        }
    }

    /// <summary>Called after a config write landed (offset/length as the guest issued them).</summary>
    protected virtual void OnConfigWritten(int offset, int length)
    {
    }

    /// <summary>Access to memory BAR <paramref name="bar"/> at <paramref name="offset"/> (already range-checked).</summary>
    public abstract void BarRead(int bar, ulong offset, Span<byte> data);

    public abstract void BarWrite(int bar, ulong offset, ReadOnlySpan<byte> data);
}

/// <summary>The host bridge at 00:00.0 (an Intel-compatible ID Linux knows, no BARs, class 06/00).</summary>
public sealed class PciHostBridge : PciFunction
{
    public PciHostBridge() : base(0x8086, 0x29C0, 0x060000, 0, 0x1AF4, 0x1100)
    {
    }

    public override void BarRead(int bar, ulong offset, Span<byte> data) => data.Fill(0xFF);

    public override void BarWrite(int bar, ulong offset, ReadOnlySpan<byte> data)
    {
    }
}
