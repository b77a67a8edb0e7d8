using System.Diagnostics.CodeAnalysis;

namespace Kit.HyperKit.Devices.Pci;

/// <summary>
/// PCI bus 0 reached through configuration mechanism #1 (PCI Local Bus 3.0, section 3.2.2.3.2): a 32-bit write to
/// 0xCF8 latches {enable:31, bus:23-16, device:15-11, function:10-8, register:7-2}; 0xCFC-0xCFF then read or write
/// that dword (byte/word accesses select lanes). Only function 0 of each of 32 slots exists. Byte writes to 0xCF9 are
/// the PC reset control register (Linux reboot=pci), reported through <see cref="ResetRequested"/>.
/// Also resolves guest MMIO to memory BARs, which the guest may reprogram.
/// </summary>
public sealed class PciBus : IPortDevice
{
    public const ushort ConfigAddressPort = 0xCF8;
    public const ushort ConfigDataPort = 0xCFC;

    /// <summary>The window BARs are placed in initially: below the IOAPIC/LAPIC, inside the 32-bit MMIO gap.</summary>
    public const uint MmioWindowStart = 0xD000_0000;
    public const uint MmioWindowEnd = 0xFE00_0000;

    private readonly PciFunction?[] _slots = new PciFunction?[32];
    private readonly Lock _lock = new();
    private uint _address;
    private uint _nextBar = MmioWindowStart;

    public PciBus()
    {
        _slots[0] = new PciHostBridge();
    }

    public event Action? ResetRequested;

    /// <summary>Allocates a naturally aligned BAR address in the MMIO window.</summary>
    public uint AllocateBar(uint size)
    {
        uint address = (_nextBar + size - 1) & ~(size - 1);
        if (address + (ulong)size > MmioWindowEnd)
        {
            throw new InvalidOperationException("PCI MMIO window exhausted");
        }
        _nextBar = address + size;
        return address;
    }

    public int Add(PciFunction function)
    {
        for (int slot = 1; slot < _slots.Length; slot++)
        {
            if (_slots[slot] is null)
            {
                _slots[slot] = function;
                return slot;
            }
        }
        throw new InvalidOperationException("PCI bus 0 is full");
    }

    public PciFunction? this[int slot] => _slots[slot];

    private PciFunction? Selected(out int register)
    {
        register = (int)(_address & 0xFC);
        if ((_address & 0x8000_0000) == 0)
        {
            return null;
        }
        int bus = (int)((_address >> 16) & 0xFF);
        int device = (int)((_address >> 11) & 0x1F);
        int function = (int)((_address >> 8) & 0x7);
        return bus == 0 && function == 0 ? _slots[device] : null;
    }

    public void Read(ushort port, Span<byte> data)
    {
        lock (_lock)
        {
            if (port >= ConfigAddressPort && port < ConfigAddressPort + 4)
            {
                if (port == ConfigAddressPort && data.Length == 4)
                {
                    System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(data, _address);
                }
                else
                {
                    data.Fill(port == 0xCF9 ? (byte)0 : (byte)0xFF);
                }
                return;
            }
            PciFunction? function = Selected(out int register);
            int lane = port - ConfigDataPort;
            if (function is null || lane + data.Length > 4)
            {
                data.Fill(0xFF); // master abort: no device answers
                return;
            }
            function.ReadConfig(register + lane, data);
        }
    }

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        Action? reset = null;
        lock (_lock)
        {
            if (port >= ConfigAddressPort && port < ConfigAddressPort + 4)
            {
                if (port == ConfigAddressPort && data.Length == 4)
                {
                    _address = System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(data) & 0x80FF_FFFC;
                }
                else if (port == 0xCF9 && data.Length == 1 && (data[0] & 0x04) != 0)
                {
                    reset = ResetRequested;
                }
                // Other partial writes to the address register are ignored (the spec passes them to the I/O bus).
            }
            else
            {
                PciFunction? function = Selected(out int register);
                int lane = port - ConfigDataPort;
                if (function is not null && lane + data.Length <= 4)
                {
                    function.WriteConfig(register + lane, data);
                }
            }
        }
        reset?.Invoke();
    }

    private PciFunction? FindBar(ulong address, out int bar, out ulong offset)
    {
        foreach (PciFunction? function in _slots)
        {
            if (function is null || !function.MemoryEnabled)
            {
                continue;
            }
            for (int i = 0; i < 6; i++)
            {
                uint size = function.BarSize(i);
                uint start = function.BarAddress(i);
                if (size != 0 && start != 0 && address >= start && address - start < size)
                {
                    bar = i;
                    offset = address - start;
                    return function;
                }
            }
        }
        bar = 0;
        offset = 0;
        return null;
    }

    public bool TryMmioRead(ulong address, Span<byte> data)
    {
        if (!TryFindBarRange(address, data.Length, out PciFunction? function, out int bar, out ulong offset))
        {
            return false;
        }
        function.BarRead(bar, offset, data);
        return true;
    }

    public bool TryMmioWrite(ulong address, ReadOnlySpan<byte> data)
    {
        if (!TryFindBarRange(address, data.Length, out PciFunction? function, out int bar, out ulong offset))
        {
            return false;
        }
        function.BarWrite(bar, offset, data);
        return true;
    }

    /// <summary>The function and BAR whose window holds all of [address, address + length).</summary>
    private bool TryFindBarRange(ulong address, int length, [NotNullWhen(true)] out PciFunction? function, out int bar, out ulong offset)
    {
        lock (_lock)
        {
            function = FindBar(address, out bar, out offset);
        }
        return function is not null && offset + (ulong)length <= function.BarSize(bar);
    }
}
