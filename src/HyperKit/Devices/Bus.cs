namespace Kit.HyperKit.Devices;

/// <summary>A device reached through x86 port I/O. Called on a vCPU thread; implementations synchronise themselves.</summary>
public interface IPortDevice
{
    void Read(ushort port, Span<byte> data);

    void Write(ushort port, ReadOnlySpan<byte> data);
}

/// <summary>A device reached through memory-mapped I/O (offset is relative to the region the device claimed).</summary>
public interface IMmioDevice
{
    void Read(ulong offset, Span<byte> data);

    void Write(ulong offset, ReadOnlySpan<byte> data);
}

/// <summary>A level-triggered interrupt input (an in-kernel PIC/IOAPIC pin, or a test probe).</summary>
public interface IInterruptLine
{
    void SetLevel(bool high);
}

/// <summary>Delivers a message-signalled interrupt as programmed by the guest in an MSI-X table entry.</summary>
public interface IMsiSink
{
    void Signal(ulong address, uint data);
}

/// <summary>
/// Port-I/O dispatch. Unclaimed ports read as all ones (floating ISA bus) and ignore writes, as on a PC; they are
/// counted so a guest hammering unknown ports is visible in diagnostics without a log line per access.
/// </summary>
public sealed class PortBus
{
    private readonly List<(ushort Start, ushort Length, IPortDevice Device)> _ranges = [];

    public long UnclaimedAccesses { get; private set; }

    public void Register(ushort start, ushort length, IPortDevice device)
    {
        foreach (var (s, l, _) in _ranges)
        {
            if (start < s + l && s < start + length)
            {
                throw new InvalidOperationException($"port range 0x{start:x}+{length} overlaps 0x{s:x}+{l}");
            }
        }
        _ranges.Add((start, length, device));
    }

    private IPortDevice? Find(ushort port)
    {
        foreach (var (s, l, d) in _ranges)
        {
            if (port >= s && port < s + l)
            {
                return d;
            }
        }
        return null;
    }

    public void Read(ushort port, Span<byte> data)
    {
        IPortDevice? device = Find(port);
        if (device is null)
        {
            UnclaimedAccesses++;
            data.Fill(0xFF);
            return;
        }
        device.Read(port, data);
    }

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        IPortDevice? device = Find(port);
        if (device is null)
        {
            UnclaimedAccesses++;
            return;
        }
        device.Write(port, data);
    }
}

/// <summary>MMIO dispatch over fixed regions plus one dynamic resolver (PCI BARs, which the guest may move).</summary>
public sealed class MmioBus
{
    private readonly List<(ulong Start, ulong Length, IMmioDevice Device)> _ranges = [];
    private Pci.PciBus? _pci;

    public long UnclaimedAccesses { get; private set; }

    public void Register(ulong start, ulong length, IMmioDevice device) => _ranges.Add((start, length, device));

    public void AttachPci(Pci.PciBus pci) => _pci = pci;

    public void Read(ulong address, Span<byte> data)
    {
        foreach (var (s, l, d) in _ranges)
        {
            if (address >= s && address - s < l)
            {
                d.Read(address - s, data);
                return;
            }
        }
        if (_pci is not null && _pci.TryMmioRead(address, data))
        {
            return;
        }
        UnclaimedAccesses++;
        data.Fill(0xFF);
    }

    public void Write(ulong address, ReadOnlySpan<byte> data)
    {
        foreach (var (s, l, d) in _ranges)
        {
            if (address >= s && address - s < l)
            {
                d.Write(address - s, data);
                return;
            }
        }
        if (_pci is not null && _pci.TryMmioWrite(address, data))
        {
            return;
        }
        UnclaimedAccesses++;
    }
}
