using System.Text;
using Kit.HyperKit.Devices.Serial;

namespace Kit.HyperKit.Tests;

public sealed class SerialTests
{
    private const ushort Base = 0x3F8;
    private readonly List<byte> _output = [];
    private readonly RecordingLine _irq = new();
    private readonly Serial8250 _uart;

    public SerialTests() => _uart = new Serial8250(Base, data => _output.AddRange(data.ToArray()), _irq);

    private byte In(int register)
    {
        Span<byte> b = stackalloc byte[1];
        _uart.Read((ushort)(Base + register), b);
        return b[0];
    }

    private void Out(int register, byte value) => _uart.Write((ushort)(Base + register), [value]);

    [Fact]
    public void TransmittedBytesReachTheSink()
    {
        foreach (byte b in "hello\n"u8)
        {
            Assert.NotEqual(0, In(5) & 0x20); // THR empty
            Out(0, b);
        }
        Assert.Equal("hello\n", Encoding.ASCII.GetString(_output.ToArray()));
    }

    [Fact]
    public void LoopbackPassesLinuxAutoconfigCheck()
    {
        // drivers/tty/serial/8250/8250_port.c: MCR = LOOP | 0x0A must read MSR & 0xF0 == 0x90.
        Out(4, 0x10 | 0x0A);
        Assert.Equal(0x90, In(6) & 0xF0);
        Out(0, 0x5A);
        Assert.Empty(_output);
        Assert.Equal(0x01, In(5) & 0x01);
        Assert.Equal(0x5A, In(0));
        Out(4, 0);
    }

    [Fact]
    public void ScratchDivisorAndFifoIdentifyA16550A()
    {
        Out(7, 0xA5);
        Assert.Equal(0xA5, In(7));
        Out(3, 0x80); // DLAB
        Out(0, 0x01);
        Out(1, 0x00);
        Assert.Equal(0x01, In(0));
        Out(3, 0x03);
        Out(2, 0x07); // enable + clear FIFOs
        Assert.Equal(0xC0, In(2) & 0xC0);
    }

    [Fact]
    public void ReceivedDataRaisesTheInterruptWhenEnabled()
    {
        Out(4, 0x08); // OUT2 gates the IRQ
        Out(1, 0x01); // RDI
        Assert.False(_irq.Level);
        Assert.Equal(2, _uart.Receive("ok"u8));
        Assert.True(_irq.Level);
        Assert.Equal(0x04, In(2) & 0x0F);
        Assert.Equal((byte)'o', In(0));
        Assert.Equal((byte)'k', In(0));
        Assert.False(_irq.Level);
        Assert.Equal(0x01, In(2) & 0x0F);
    }

    [Fact]
    public void EnablingThriRaisesAnInterruptThatIirReadClears()
    {
        Out(4, 0x08);
        Out(1, 0x02);
        Assert.True(_irq.Level);
        Assert.Equal(0x02, In(2) & 0x0F);
        Assert.False(_irq.Level);
        Out(0, (byte)'x'); // transmitter empties at once: THRI again
        Assert.True(_irq.Level);
    }

    [Fact]
    public void InputBeyondTheFifoIsNotTaken()
    {
        Assert.Equal(16, _uart.Receive(new byte[40]));
        Assert.False(_uart.CanAcceptInput);
    }

    [Fact]
    public void WritesToReadOnlyRegistersAreIgnored()
    {
        Out(5, 0x00);
        Out(6, 0xFF);
        Assert.Equal(0x60, In(5) & 0x60);
    }
}
