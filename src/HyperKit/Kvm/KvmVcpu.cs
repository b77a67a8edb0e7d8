using System.Runtime.InteropServices;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// One virtual CPU: register state and the KVM_RUN loop primitive. Exit details are read from the kvm_run page that
/// KVM shares with us through mmap (struct kvm_run, linux/kvm.h; offsets in reference/hyperkit.md Appendix A).
/// All methods except <see cref="RequestImmediateExit"/> must be called from the thread that runs the vCPU.
/// </summary>
public sealed unsafe class KvmVcpu : IDisposable
{
    // struct kvm_run offsets.
    private const int ImmediateExitOffset = 1;
    private const int ExitReasonOffset = 8;
    private const int UnionOffset = 32;

    private readonly FdHandle _fd;
    private readonly byte* _run;
    private readonly int _runSize;

    internal KvmVcpu(KvmVm vm, int id, FdHandle fd, int mmapSize)
    {
        Vm = vm;
        Id = id;
        _fd = fd;
        _runSize = mmapSize;
        nint map = LibC.Mmap(0, (nuint)mmapSize, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_SHARED, fd.Fd, 0);
        if (map == -1)
        {
            int errno = LibC.LastErrno;
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
            throw new KvmException($"{what} (vCPU {Id})", LibC.LastErrno);
        }
    }

    /// <summary>
    /// KVM_RUN once. Returns false when the call was interrupted (EINTR: a kick signal or immediate_exit), true when
    /// the vCPU exited with a reason in <see cref="ExitReason"/>.
    /// </summary>
    public bool Run()
    {
        if (LibC.Ioctl(Fd, KvmIoctl.Run, 0) == 0)
        {
            return true;
        }
        int errno = LibC.LastErrno;
        if (errno == LibC.EINTR || errno == LibC.EAGAIN)
        {
            return false;
        }
        throw new KvmException($"KVM_RUN (vCPU {Id})", errno);
    }

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
    public KvmExitReason ExitReason => (KvmExitReason)(*(uint*)(_run + ExitReasonOffset));

    /// <summary>KVM_EXIT_IO: true for out (guest writes), the port, access size, repeat count.</summary>
    public bool IoIsOut => _run[UnionOffset] == 1;

    public ushort IoPort => *(ushort*)(_run + UnionOffset + 2);

    public int IoSize => _run[UnionOffset + 1];

    public int IoCount => (int)*(uint*)(_run + UnionOffset + 4);

    /// <summary>The I/O data buffer inside kvm_run (size × count bytes), bounds-checked against the mapping.</summary>
    public Span<byte> IoData
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

    public ulong MmioAddress => *(ulong*)(_run + UnionOffset);

    public bool MmioIsWrite => _run[UnionOffset + 20] != 0;

    /// <summary>KVM_EXIT_MMIO data (1, 2, 4 or 8 bytes) in kvm_run; writes to it are returned to the guest on reads.</summary>
    public Span<byte> MmioData
    {
        get
        {
            uint len = Math.Min(*(uint*)(_run + UnionOffset + 16), 8u);
            // SAFETY: data[8] lies at kvm_run+40..48, inside the mapping; len is clamped to 8.
            return new Span<byte>(_run + UnionOffset + 8, (int)len);
        }
    }

    /// <summary>KVM_EXIT_SYSTEM_EVENT type (1 shutdown, 2 reset, 3 crash).</summary>
    public uint SystemEventType => *(uint*)(_run + UnionOffset);

    /// <summary>KVM_EXIT_INTERNAL_ERROR suberror (1 emulation failure, 2 simultaneous #PF, 3 delivery event, ...).</summary>
    public uint InternalSuberror => *(uint*)(_run + UnionOffset);

    public ulong FailEntryReason => *(ulong*)(_run + UnionOffset);

    /// <summary>A one-line description of an internal error's extra data words, for diagnostics.</summary>
    public string InternalErrorData()
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

    public void Dispose()
    {
        // SAFETY: _run was returned by mmap with _runSize and is unmapped exactly once, after which no accessor runs
        // (the owner disposes vCPUs only after their threads ended).
        _ = LibC.Munmap((nint)_run, (nuint)_runSize);
        _fd.Dispose();
    }
}
