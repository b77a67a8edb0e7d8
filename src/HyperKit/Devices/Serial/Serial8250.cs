namespace Kit.HyperKit.Devices.Serial;

/// <summary>
/// A 16550A-compatible UART (the "8250" Linux drives as ttyS0): eight registers at base..base+7, DLAB-switched divisor
/// latch, 16-byte receive FIFO, loopback mode (Linux's autoconfig checks it: MCR=LOOP|RTS|OUT2 must read back MSR
/// CTS|DCD), scratch register, and a level interrupt that follows IER and the pending conditions (IIR priority:
/// line status, received data, transmitter empty, modem status). Output goes to a sink as it is written; the
/// transmitter is always empty, so a guest never waits for it.
/// </summary>
public sealed class Serial8250 : IPortDevice
{
    // Register offsets (16550 datasheet).
    private const int Rbr = 0, Ier = 1, Iir = 2, Lcr = 3, Mcr = 4, Lsr = 5, Msr = 6, Scr = 7;
    private const byte IerRdi = 1, IerThri = 2, IerRlsi = 4, IerMsi = 8;
    private const byte LcrDlab = 0x80;
    private const byte McrLoop = 0x10;
    private const byte LsrDr = 0x01, LsrOe = 0x02, LsrThre = 0x20, LsrTemt = 0x40;
    private const int FifoSize = 16;

    private readonly Lock _lock = new();
    private readonly ushort _base;
    private readonly Action<ReadOnlySpan<byte>> _output;
    private readonly IInterruptLine? _irq;
    private readonly Queue<byte> _rx = new();
    private byte _ier, _lcr, _mcr, _scr, _dll = 12, _dlm, _lsrErrors, _fcr, _msrDelta;
    private bool _thrInterruptPending;
    private bool _irqLevel;

    public Serial8250(ushort basePort, Action<ReadOnlySpan<byte>> output, IInterruptLine? irq)
    {
        _base = basePort;
        _output = output;
        _irq = irq;
    }

    /// <summary>Bytes received from the console that did not fit the 16-byte FIFO (overrun, as on hardware).</summary>
    public long Overruns { get; private set; }

    /// <summary>True when the guest's FIFO has room for more console input.</summary>
    public bool CanAcceptInput
    {
        get
        {
            lock (_lock)
            {
                return _rx.Count < FifoSize;
            }
        }
    }

    /// <summary>Queues console input for the guest; returns how many bytes fitted in the FIFO.</summary>
    public int Receive(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            int taken = 0;
            foreach (byte b in data)
            {
                if (_rx.Count >= FifoSize)
                {
                    break;
                }
                _rx.Enqueue(b);
                taken++;
            }
            UpdateIrq();
            return taken;
        }
    }

    public void Read(ushort port, Span<byte> data)
    {
        lock (_lock)
        {
            data.Fill(0);
            if (data.Length > 0)
            {
                data[0] = ReadRegister(port - _base);
            }
            UpdateIrq();
        }
    }

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        if (data.Length == 0)
        {
            return;
        }
        lock (_lock)
        {
            WriteRegister(port - _base, data[0]);
            UpdateIrq();
        }
    }

    private bool Dlab => (_lcr & LcrDlab) != 0;

    private byte ReadRegister(int register)
    {
        switch (register)
        {
            case Rbr:
                if (Dlab)
                {
                    return _dll;
                }
                return _rx.Count > 0 ? _rx.Dequeue() : (byte)0;
            case Ier:
                return Dlab ? _dlm : _ier;
            case Iir:
            {
                byte iir = (byte)(((_fcr & 1) != 0 ? 0xC0 : 0) | PendingInterruptId());
                // Reading IIR while it reports "THR empty" clears that condition (16550 datasheet, IIR table).
                if ((iir & 0x0F) == 0x02)
                {
                    _thrInterruptPending = false;
                }
                return iir;
            }
            case Lcr:
                return _lcr;
            case Mcr:
                return _mcr;
            case Lsr:
            {
                byte lsr = (byte)(LsrThre | LsrTemt | _lsrErrors | (_rx.Count > 0 ? LsrDr : 0));
                _lsrErrors = 0;
                return lsr;
            }
            case Msr:
            {
                byte msr;
                if ((_mcr & McrLoop) != 0)
                {
                    // Loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                    msr = (byte)((((_mcr >> 1) & 1) << 4) | ((_mcr & 1) << 5) | (((_mcr >> 2) & 1) << 6) | (((_mcr >> 3) & 1) << 7));
                }
                else
                {
                    msr = 0xB0; // CTS, DSR, DCD asserted: a terminal is always connected.
                }
                msr |= _msrDelta;
                _msrDelta = 0;
                return msr;
            }
            default:
                return _scr;
        }
    }

    private void WriteRegister(int register, byte value)
    {
        switch (register)
        {
            case Rbr:
                if (Dlab)
                {
                    _dll = value;
                    return;
                }
                if ((_mcr & McrLoop) != 0)
                {
                    if (_rx.Count < FifoSize)
                    {
                        _rx.Enqueue(value);
                    }
                    else
                    {
                        _lsrErrors |= LsrOe;
                        Overruns++;
                    }
                }
                else
                {
                    _output([value]);
                }
                _thrInterruptPending = true;
                return;
            case Ier:
                if (Dlab)
                {
                    _dlm = value;
                    return;
                }
                // Enabling THRI while the transmitter is empty raises the interrupt at once (Linux relies on this).
                if ((value & IerThri) != 0 && (_ier & IerThri) == 0)
                {
                    _thrInterruptPending = true;
                }
                _ier = (byte)(value & 0x0F);
                return;
            case Iir:
                _fcr = value;
                if ((value & 0x02) != 0)
                {
                    _rx.Clear();
                }
                return;
            case Lcr:
                _lcr = value;
                return;
            case Mcr:
                _mcr = (byte)(value & 0x1F);
                return;
            case Scr:
                _scr = value;
                return;
            default:
                return; // LSR and MSR are read-only.
        }
    }

    /// <summary>IIR bits 0-3: 1 = none; otherwise the highest-priority enabled pending source.</summary>
    private byte PendingInterruptId()
    {
        if ((_ier & IerRlsi) != 0 && _lsrErrors != 0)
        {
            return 0x06;
        }
        if ((_ier & IerRdi) != 0 && _rx.Count > 0)
        {
            return 0x04;
        }
        if ((_ier & IerThri) != 0 && _thrInterruptPending)
        {
            return 0x02;
        }
        if ((_ier & IerMsi) != 0 && _msrDelta != 0)
        {
            return 0x00;
        }
        return 0x01;
    }

    private void UpdateIrq()
    {
        // OUT2 gates the interrupt output on PC-compatible boards; Linux sets it before relying on interrupts.
        bool level = PendingInterruptId() != 0x01 && (_mcr & 0x08) != 0;
        if (level != _irqLevel)
        {
            _irqLevel = level;
            _irq?.SetLevel(level);
        }
    }
}
