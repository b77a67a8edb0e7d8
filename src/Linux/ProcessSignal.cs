using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// kill(2) with any signal: .NET's <see cref="System.Diagnostics.Process.Kill()"/> sends only SIGKILL, and a command kit
/// supervises should get the SIGTERM or SIGHUP kit got, so that it can shut down cleanly before anything harder.
/// </summary>
public static partial class ProcessSignal
{
    /// <summary>Sends <paramref name="signal"/> to process <paramref name="pid"/>; false if it is gone (ESRCH) or not ours.</summary>
    public static bool Send(int pid, PosixSignal signal) => pid > 0 && Kill(pid, Number(signal)) == 0;

    /// <summary>
    /// Sends <paramref name="signal"/> to every process of group <paramref name="pgid"/> (kill(2) with a negative pid),
    /// so a child's own children (git's ssh or remote helper) go with it; false if the group is gone.
    /// </summary>
    public static bool SendToGroup(int pgid, PosixSignal signal) => pgid > 1 && Kill(-pgid, Number(signal)) == 0;

    /// <summary>The Linux number of <paramref name="signal"/> (signal(7)); 128 plus it is a shell's exit code for it.</summary>
    /// <remarks>
    /// .NET's <see cref="PosixSignal"/> values are its own (negative) codes, not the kernel's; the stop signals are
    /// mapped, and a raw (positive) number cast to <see cref="PosixSignal"/> is the kernel's already.
    /// </remarks>
    public static int Number(PosixSignal signal) => signal switch
    {
        PosixSignal.SIGHUP => 1,
        PosixSignal.SIGINT => 2,
        PosixSignal.SIGQUIT => 3,
        PosixSignal.SIGTERM => 15,
        _ => (int)signal > 0 ? (int)signal : throw new ArgumentOutOfRangeException(nameof(signal)),
    };

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
