using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// How a vCPU thread blocked in KVM_RUN is interrupted (pause, stop).
///
/// CoreCLR already owns SIGRTMIN (thread activation injection for GC suspension) and installs handlers for the
/// usual signals, so we take a different real-time signal, SIGRTMAX-2, and install for it a handler that is a single
/// native <c>ret</c> instruction on an executable page of our own. A native no-op matters: a managed
/// (UnmanagedCallersOnly) handler would have to switch the interrupted thread into cooperative GC mode from inside a
/// signal, which can deadlock against a suspension in progress. The handler is installed without SA_RESTART, so the
/// signal makes KVM_RUN return EINTR.
///
/// The race between "decide to stop" and "thread enters KVM_RUN" is closed by kvm_run.immediate_exit
/// (KVM_CAP_IMMEDIATE_EXIT): the kicker first sets immediate_exit = 1, then sends the signal with tgkill to the
/// thread's kernel tid. If the thread is inside KVM_RUN the signal interrupts it; if it is about to enter, KVM sees
/// immediate_exit and returns EINTR at once. The vCPU loop re-checks its stop/pause flags after every EINTR and clears
/// immediate_exit before re-entering.
/// </summary>
public static unsafe class VcpuSignal
{
    private static readonly Lock s_lock = new();
    private static int s_signal;

    /// <summary>The signal number used for kicks, installing the handler on first use.</summary>
    public static int Number
    {
        get
        {
            lock (s_lock)
            {
                if (s_signal == 0)
                {
                    s_signal = Install();
                }
                return s_signal;
            }
        }
    }

    private static int Install()
    {
        int signal = LibC.CurrentSigRtMax() - 2;
        nint page = LibC.Mmap(0, 4096, LibC.PROT_READ | LibC.PROT_WRITE, LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS, -1, 0);
        if (page == -1)
        {
            throw new KvmException("mmap of the kick-signal handler page", Sys.LastErrno);
        }
        // SAFETY: page is a fresh private 4 KiB RW mapping; we write one byte (x86 RET) and then make it read+exec.
        // It is never unmapped: the handler must stay valid for the life of the process.
        *(byte*)page = 0xC3;
        if (LibC.Mprotect(page, 4096, LibC.PROT_READ | 4 /* PROT_EXEC */) != 0)
        {
            throw new KvmException("mprotect of the kick-signal handler page", Sys.LastErrno);
        }
        var action = new LibC.SigActionStruct { Handler = page, Flags = 0 };
        // SAFETY: action is a stack struct of glibc's struct sigaction layout; glibc fills in its own restorer.
        if (LibC.SigAction(signal, &action, null) != 0)
        {
            throw new KvmException($"sigaction({signal})", Sys.LastErrno);
        }
        return signal;
    }

    /// <summary>Sends the kick signal to one thread of this process, by kernel thread id.</summary>
    public static void Kick(int tid)
    {
        if (tid > 0)
        {
            _ = LibC.TgKill(LibC.GetPid(), tid, Number);
        }
    }
}
