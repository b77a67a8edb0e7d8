using System.Buffers.Binary;

namespace Kit.HyperKit.Devices.Power;

/// <summary>How the guest asked the machine to stop.</summary>
public enum PowerEvent
{
    PowerOff,
    Reset,
}

/// <summary>
/// ACPI fixed-hardware PM1a event block (PM1_STS, PM1_EN at 0x600) and control block (PM1_CNT at 0x604),
/// ACPI 6.x section 4.8.3. PM1_CNT reads SCI_EN set (the machine is always in ACPI mode: the FADT has no SMI_CMD).
/// Writing SLP_EN (bit 13) with any SLP_TYP enters a sleep state; we only implement S5, so every such write powers off.
/// </summary>
public sealed class AcpiPmDevice(ushort eventPort, ushort controlPort, Action<PowerEvent> onEvent) : IPortDevice
{
    private const ushort SciEn = 1, SlpEn = 1 << 13;
    private readonly Lock _lock = new();
    private ushort _status, _enable, _control = SciEn;

    public void Read(ushort port, Span<byte> data)
    {
        Span<byte> image = stackalloc byte[8];
        lock (_lock)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(image, _status);
            BinaryPrimitives.WriteUInt16LittleEndian(image[2..], _enable);
            BinaryPrimitives.WriteUInt16LittleEndian(image[4..], _control);
        }
        int offset = port >= controlPort ? 4 + port - controlPort : port - eventPort;
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = offset + i < image.Length ? image[offset + i] : (byte)0xFF;
        }
    }

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        bool sleep = false;
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                int offset = port >= controlPort ? 4 + port - controlPort + i : port - eventPort + i;
                byte b = data[i];
                switch (offset)
                {
                    case 0: _status &= (ushort)~b; break;          // write-one-to-clear
                    case 1: _status &= (ushort)~(b << 8); break;
                    case 2: _enable = (ushort)((_enable & 0xFF00) | b); break;
                    case 3: _enable = (ushort)((_enable & 0x00FF) | (b << 8)); break;
                    case 4: _control = (ushort)((_control & 0xFF00) | b | SciEn); break;
                    case 5:
                        _control = (ushort)((_control & 0x00FF) | ((b << 8) & ~SlpEn));
                        sleep |= ((b << 8) & SlpEn) != 0;
                        break;
                }
            }
        }
        if (sleep)
        {
            onEvent(PowerEvent.PowerOff);
        }
    }
}

/// <summary>
/// The part of an i8042 keyboard controller Linux needs to reboot (reboot=k, arch/x86/kernel/reboot.c): status reads
/// 0 (input buffer empty, so the kernel does not spin waiting) and command 0xFE (pulse reset line) resets the machine.
/// Everything else is accepted and ignored; the FADT tells Linux there is no 8042, so its driver does not probe.
/// </summary>
public sealed class I8042Device(Action<PowerEvent> onEvent) : IPortDevice
{
    public void Read(ushort port, Span<byte> data) => data.Clear();

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        if (port == 0x64 && data.Length > 0 && data[0] == 0xFE)
        {
            onEvent(PowerEvent.Reset);
        }
    }
}

/// <summary>
/// A test-only exit port (like QEMU's isa-debug-exit): a freestanding guest program writes a byte to end the run
/// with that value as its result.
/// </summary>
public sealed class DebugExitDevice(Action<byte> onExit) : IPortDevice
{
    public void Read(ushort port, Span<byte> data) => data.Clear();

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        if (data.Length > 0)
        {
            onExit(data[0]);
        }
    }
}
