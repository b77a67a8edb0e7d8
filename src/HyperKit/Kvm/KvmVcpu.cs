using System.Runtime.InteropServices;
using Kit.HyperKit.Hypervisor;
using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// One virtual CPU: register state and the KVM_RUN loop primitive, the <see cref="IVcpu"/> of the KVM backend. Exit
/// details are read from the kvm_run page that KVM shares with us through mmap (struct kvm_run, linux/kvm.h; offsets
/// in reference/hyperkit.md Appendix A) and handed out as a <see cref="VmExit"/> whose data spans point into it.
/// All methods except <see cref="RequestImmediateExit"/> and <see cref="Kick"/> must be called from the thread that
/// runs the vCPU.
/// </summary>
public sealed unsafe class KvmVcpu : IVcpu
{
    // struct kvm_run offsets.
    private const int ImmediateExitOffset = 1;
    private const int ExitReasonOffset = 8;
    private const int UnionOffset = 32;

    private readonly FdHandle _fd;
    private readonly byte* _run;
    private readonly int _runSize;
    private int _tid;

    internal KvmVcpu(KvmVm vm, int id, FdHandle fd, int mmapSize)
    {
        Vm = vm;
        Id = id;
        _fd = fd;
        _runSize = mmapSize;
        nint map = LibC.Mmap(0, (nuint)mmapSize, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_SHARED, fd.Fd, 0);
        if (map == -1)
        {
            int errno = Sys.LastErrno;
            fd.Dispose();
            throw new KvmException("mmap of kvm_run", errno);
        }
        _run = (byte*)map;
    }

    public KvmVm Vm { get; }

    public int Id { get; }

    private int Fd => _fd.Fd;

    private void Check(int result, string what)
    {
        if (result < 0)
        {
            throw new KvmException($"{what} (vCPU {Id})", Sys.LastErrno);
        }
    }

    /// <summary>
    /// KVM_RUN once. Returns <see cref="VmExitKind.Interrupted"/> when the call was interrupted (EINTR: a kick signal or
    /// immediate_exit), else the exit KVM reported, translated (its data spans point into kvm_run).
    /// </summary>
    public VmExit Run()
    {
        if (LibC.Ioctl(Fd, KvmIoctl.Run, 0) != 0)
        {
            int errno = Sys.LastErrno;
            if (errno == Sys.EINTR || errno == Sys.EAGAIN)
            {
                return VmExit.Interrupted();
            }
            throw new KvmException($"KVM_RUN (vCPU {Id})", errno);
        }
        KvmExitReason reason = ExitReason;
        switch (reason)
        {
            case KvmExitReason.Io:
                return IoIsOut ? VmExit.IoOut(IoPort, IoData, IoSize) : VmExit.IoIn(IoPort, IoData, IoSize);
            case KvmExitReason.Mmio:
                return MmioIsWrite ? VmExit.MmioWrite(MmioAddress, MmioData) : VmExit.MmioRead(MmioAddress, MmioData);
            case KvmExitReason.Intr:
                return VmExit.Ignore();
            case KvmExitReason.Hlt:
                return VmExit.Hlt();
            case KvmExitReason.Shutdown:
                return VmExit.Shutdown();
            case KvmExitReason.SystemEvent:
            {
                uint type = SystemEventType;
                return VmExit.PlatformEvent(type switch
                {
                    1 => SystemEventKind.PowerOff, // KVM_SYSTEM_EVENT_SHUTDOWN
                    2 => SystemEventKind.Reset,    // KVM_SYSTEM_EVENT_RESET
                    3 => SystemEventKind.Crash,    // KVM_SYSTEM_EVENT_CRASH
                    _ => SystemEventKind.Other,
                }, type);
            }
            case KvmExitReason.InternalError:
                return VmExit.InternalError(InternalSuberror, InternalErrorData());
            case KvmExitReason.FailEntry:
                return VmExit.FailEntry(FailEntryReason);
            default:
                return VmExit.Unknown((uint)reason, reason.ToString());
        }
    }

    /// <summary>Records the calling thread's kernel tid, where <see cref="Kick"/> sends its signal.</summary>
    public void BindCurrentThread() => Volatile.Write(ref _tid, LibC.GetTid());

    /// <summary>
    /// Sets immediate_exit, then signals the vCPU's thread (VcpuSignal): KVM_RUN returns EINTR whether the thread is
    /// inside it or about to enter.
    /// </summary>
    public void Kick()
    {
        RequestImmediateExit(true);
        VcpuSignal.Kick(Volatile.Read(ref _tid));
    }

    public void ClearKick() => RequestImmediateExit(false);

    /// <summary>
    /// Sets kvm_run.immediate_exit so the next (or current, once a signal lands) KVM_RUN returns EINTR. Safe from any
    /// thread: it is a single byte the kernel re-reads on every entry.
    /// </summary>
    public void RequestImmediateExit(bool value)
    {
        // SAFETY: _run maps at least one page (KVM_GET_VCPU_MMAP_SIZE) for the lifetime of this object; byte 1 is
        // immediate_exit.
        Volatile.Write(ref _run[ImmediateExitOffset], value ? (byte)1 : (byte)0);
    }

    // SAFETY (all readers below): offsets lie within the first 64 bytes of kvm_run, which is at least a page long.
    private KvmExitReason ExitReason => (KvmExitReason)(*(uint*)(_run + ExitReasonOffset));

    /// <summary>KVM_EXIT_IO: true for out (guest writes), the port, access size, repeat count.</summary>
    private bool IoIsOut => _run[UnionOffset] == 1;

    private ushort IoPort => *(ushort*)(_run + UnionOffset + 2);

    private int IoSize => _run[UnionOffset + 1];

    private int IoCount => (int)*(uint*)(_run + UnionOffset + 4);

    /// <summary>The I/O data buffer inside kvm_run (size × count bytes), bounds-checked against the mapping.</summary>
    private Span<byte> IoData
    {
        get
        {
            ulong offset = *(ulong*)(_run + UnionOffset + 8);
            ulong length = (ulong)IoSize * (ulong)IoCount;
            if (offset > (ulong)_runSize || length > (ulong)_runSize - offset)
            {
                throw new KvmException($"KVM_EXIT_IO data outside kvm_run (offset {offset}, length {length})");
            }
            // SAFETY: the range was checked to lie within the kvm_run mapping.
            return new Span<byte>(_run + offset, (int)length);
        }
    }

    private ulong MmioAddress => *(ulong*)(_run + UnionOffset);

    private bool MmioIsWrite => _run[UnionOffset + 20] != 0;

    /// <summary>KVM_EXIT_MMIO data (1, 2, 4 or 8 bytes) in kvm_run; writes to it are returned to the guest on reads.</summary>
    private Span<byte> MmioData
    {
        get
        {
            uint len = Math.Min(*(uint*)(_run + UnionOffset + 16), 8u);
            // SAFETY: data[8] lies at kvm_run+40..48, inside the mapping; len is clamped to 8.
            return new Span<byte>(_run + UnionOffset + 8, (int)len);
        }
    }

    /// <summary>KVM_EXIT_SYSTEM_EVENT type (1 shutdown, 2 reset, 3 crash).</summary>
    private uint SystemEventType => *(uint*)(_run + UnionOffset);

    /// <summary>KVM_EXIT_INTERNAL_ERROR suberror (1 emulation failure, 2 simultaneous #PF, 3 delivery event, ...).</summary>
    private uint InternalSuberror => *(uint*)(_run + UnionOffset);

    private ulong FailEntryReason => *(ulong*)(_run + UnionOffset);

    /// <summary>A one-line description of an internal error's extra data words, for diagnostics.</summary>
    private string InternalErrorData()
    {
        uint n = Math.Min(*(uint*)(_run + UnionOffset + 4), 16u);
        var parts = new string[n];
        for (int i = 0; i < n; i++)
        {
            parts[i] = $"0x{*(ulong*)(_run + UnionOffset + 8 + 8 * i):x}";
        }
        return string.Join(' ', parts);
    }

    /// <summary>Page <paramref name="pageOffset"/> of this vCPU's mapping, or null when the mapping is shorter.</summary>
    internal byte* MappedPage(int pageOffset)
    {
        const int pageSize = 4096;
        return pageOffset > 0 && (long)(pageOffset + 1) * pageSize <= _runSize ? _run + (long)pageOffset * pageSize : null;
    }

    public KvmRegs GetRegs()
    {
        KvmRegs regs;
        // SAFETY: the kernel writes exactly sizeof(kvm_regs) = 144 bytes into the stack struct.
        Check(LibC.Ioctl(Fd, KvmIoctl.GetRegs, &regs), "KVM_GET_REGS");
        return regs;
    }

    public void SetRegs(in KvmRegs regs)
    {
        fixed (KvmRegs* p = &regs)
        {
            // SAFETY: p points to a pinned 144-byte kvm_regs, read by the kernel.
            Check(LibC.Ioctl(Fd, KvmIoctl.SetRegs, p), "KVM_SET_REGS");
        }
    }

    public KvmSregs GetSregs()
    {
        KvmSregs sregs;
        // SAFETY: the kernel writes sizeof(kvm_sregs) = 312 bytes into the stack struct.
        Check(LibC.Ioctl(Fd, KvmIoctl.GetSregs, &sregs), "KVM_GET_SREGS");
        return sregs;
    }

    public void SetSregs(in KvmSregs sregs)
    {
        fixed (KvmSregs* p = &sregs)
        {
            // SAFETY: pinned 312-byte kvm_sregs, read by the kernel.
            Check(LibC.Ioctl(Fd, KvmIoctl.SetSregs, p), "KVM_SET_SREGS");
        }
    }

    public KvmFpu GetFpu()
    {
        KvmFpu fpu;
        // SAFETY: the kernel writes 416 bytes (sizeof kvm_fpu) into the stack struct of that size.
        Check(LibC.Ioctl(Fd, KvmIoctl.GetFpu, &fpu), "KVM_GET_FPU");
        return fpu;
    }

    public void SetFpu(in KvmFpu fpu)
    {
        fixed (KvmFpu* p = &fpu)
        {
            // SAFETY: pinned 416-byte kvm_fpu, read by the kernel.
            Check(LibC.Ioctl(Fd, KvmIoctl.SetFpu, p), "KVM_SET_FPU");
        }
    }

    /// <summary>KVM_SET_CPUID2. Must precede KVM_SET_MSRS: KVM derives which MSRs exist from the guest CPUID.</summary>
    public void SetCpuid(ReadOnlySpan<KvmCpuidEntry2> entries)
    {
        int bytes = 8 + entries.Length * sizeof(KvmCpuidEntry2);
        byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            // SAFETY: buffer is a kvm_cpuid2 header plus exactly entries.Length entries.
            *(uint*)buffer = (uint)entries.Length;
            entries.CopyTo(new Span<KvmCpuidEntry2>(buffer + 8, entries.Length));
            Check(LibC.Ioctl(Fd, KvmIoctl.SetCpuid2, buffer), "KVM_SET_CPUID2");
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>KVM_SET_MSRS; returns how many were set (KVM stops at the first one it rejects).</summary>
    public int SetMsrs(ReadOnlySpan<(uint Index, ulong Value)> msrs)
    {
        int bytes = 8 + msrs.Length * sizeof(KvmMsrEntry);
        byte* buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            // SAFETY: buffer is a kvm_msrs header plus exactly msrs.Length kvm_msr_entry records.
            *(uint*)buffer = (uint)msrs.Length;
            var entries = new Span<KvmMsrEntry>(buffer + 8, msrs.Length);
            for (int i = 0; i < msrs.Length; i++)
            {
                entries[i] = new KvmMsrEntry { Index = msrs[i].Index, Data = msrs[i].Value };
            }
            int set = LibC.Ioctl(Fd, KvmIoctl.SetMsrs, buffer);
            Check(set, "KVM_SET_MSRS");
            return set;
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>KVM_GET_LAPIC into a 1024-byte register page image.</summary>
    public void GetLapic(Span<byte> state)
    {
        if (state.Length != 1024)
        {
            throw new ArgumentException("kvm_lapic_state is 1024 bytes", nameof(state));
        }
        fixed (byte* p = state)
        {
            // SAFETY: p is a pinned 1024-byte buffer, the size of kvm_lapic_state.
            Check(LibC.Ioctl(Fd, KvmIoctl.GetLapic, p), "KVM_GET_LAPIC");
        }
    }

    public void SetLapic(ReadOnlySpan<byte> state)
    {
        if (state.Length != 1024)
        {
            throw new ArgumentException("kvm_lapic_state is 1024 bytes", nameof(state));
        }
        fixed (byte* p = state)
        {
            // SAFETY: pinned 1024-byte buffer read by the kernel.
            Check(LibC.Ioctl(Fd, KvmIoctl.SetLapic, p), "KVM_SET_LAPIC");
        }
    }

    void IVcpu.SetCpuid(ReadOnlySpan<CpuidEntry> entries)
    {
        var kvm = new KvmCpuidEntry2[entries.Length];
        for (int i = 0; i < entries.Length; i++)
        {
            CpuidEntry e = entries[i];
            kvm[i] = new KvmCpuidEntry2 { Function = e.Function, Index = e.Index, Flags = e.Flags, Eax = e.Eax, Ebx = e.Ebx, Ecx = e.Ecx, Edx = e.Edx };
        }
        SetCpuid(kvm);
    }

    X86Registers IVcpu.GetRegisters()
    {
        KvmRegs r = GetRegs();
        return new X86Registers
        {
            Rax = r.Rax, Rbx = r.Rbx, Rcx = r.Rcx, Rdx = r.Rdx, Rsi = r.Rsi, Rdi = r.Rdi, Rsp = r.Rsp, Rbp = r.Rbp,
            R8 = r.R8, R9 = r.R9, R10 = r.R10, R11 = r.R11, R12 = r.R12, R13 = r.R13, R14 = r.R14, R15 = r.R15,
            Rip = r.Rip, Rflags = r.Rflags,
        };
    }

    void IVcpu.SetRegisters(in X86Registers r) => SetRegs(new KvmRegs
    {
        Rax = r.Rax, Rbx = r.Rbx, Rcx = r.Rcx, Rdx = r.Rdx, Rsi = r.Rsi, Rdi = r.Rdi, Rsp = r.Rsp, Rbp = r.Rbp,
        R8 = r.R8, R9 = r.R9, R10 = r.R10, R11 = r.R11, R12 = r.R12, R13 = r.R13, R14 = r.R14, R15 = r.R15,
        Rip = r.Rip, Rflags = r.Rflags,
    });

    X86SpecialRegisters IVcpu.GetSpecialRegisters()
    {
        KvmSregs k = GetSregs();
        var s = new X86SpecialRegisters
        {
            Cs = From(k.Cs), Ds = From(k.Ds), Es = From(k.Es), Fs = From(k.Fs), Gs = From(k.Gs), Ss = From(k.Ss),
            Tr = From(k.Tr), Ldt = From(k.Ldt),
            Gdt = new X86DescriptorTable { Base = k.Gdt.Base, Limit = k.Gdt.Limit },
            Idt = new X86DescriptorTable { Base = k.Idt.Base, Limit = k.Idt.Limit },
            Cr0 = k.Cr0, Cr2 = k.Cr2, Cr3 = k.Cr3, Cr4 = k.Cr4, Cr8 = k.Cr8, Efer = k.Efer, ApicBase = k.ApicBase,
        };
        for (int i = 0; i < 4; i++)
        {
            s.InterruptBitmap[i] = k.InterruptBitmap[i];
        }
        return s;
    }

    void IVcpu.SetSpecialRegisters(in X86SpecialRegisters s)
    {
        var k = new KvmSregs
        {
            Cs = To(s.Cs), Ds = To(s.Ds), Es = To(s.Es), Fs = To(s.Fs), Gs = To(s.Gs), Ss = To(s.Ss),
            Tr = To(s.Tr), Ldt = To(s.Ldt),
            Gdt = new KvmDtable { Base = s.Gdt.Base, Limit = s.Gdt.Limit },
            Idt = new KvmDtable { Base = s.Idt.Base, Limit = s.Idt.Limit },
            Cr0 = s.Cr0, Cr2 = s.Cr2, Cr3 = s.Cr3, Cr4 = s.Cr4, Cr8 = s.Cr8, Efer = s.Efer, ApicBase = s.ApicBase,
        };
        for (int i = 0; i < 4; i++)
        {
            k.InterruptBitmap[i] = s.InterruptBitmap[i];
        }
        SetSregs(k);
    }

    private static X86Segment From(in KvmSegment k) => new()
    {
        Base = k.Base, Limit = k.Limit, Selector = k.Selector, Type = k.Type, Present = k.Present, Dpl = k.Dpl, Db = k.Db,
        S = k.S, L = k.L, G = k.G, Avl = k.Avl, Unusable = k.Unusable,
    };

    private static KvmSegment To(in X86Segment s) => new()
    {
        Base = s.Base, Limit = s.Limit, Selector = s.Selector, Type = s.Type, Present = s.Present, Dpl = s.Dpl, Db = s.Db,
        S = s.S, L = s.L, G = s.G, Avl = s.Avl, Unusable = s.Unusable,
    };

    void IVcpu.SetFpu(in X86FpuState fpu) => SetFpu(new KvmFpu { Fcw = fpu.Fcw, Mxcsr = fpu.Mxcsr });

    /// <summary>A one-line register summary for diagnostics.</summary>
    public string DescribeState()
    {
        try
        {
            KvmRegs r = GetRegs();
            KvmSregs s = GetSregs();
            return $"rip=0x{r.Rip:x} rsp=0x{r.Rsp:x} rflags=0x{r.Rflags:x} cr0=0x{s.Cr0:x} cr3=0x{s.Cr3:x} cr4=0x{s.Cr4:x} efer=0x{s.Efer:x} cs=0x{s.Cs.Selector:x}";
        }
        catch (KvmException e)
        {
            return $"registers unavailable: {e.Message}";
        }
    }

    public void Dispose()
    {
        // SAFETY: _run was returned by mmap with _runSize and is unmapped exactly once, after which no accessor runs
        // (the owner disposes vCPUs only after their threads ended).
        _ = LibC.Munmap((nint)_run, (nuint)_runSize);
        _fd.Dispose();
    }
}
