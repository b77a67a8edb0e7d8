using System.Runtime.InteropServices;
using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// The libc calls only the VMM needs: KVM's ioctl, guest memory mappings, entropy, signals and thread ids. Every call
/// returns -1 and sets errno on failure (SetLastError = true, so <see cref="Sys.LastErrno"/> reads it). The
/// general-purpose descriptor calls (open, close, read, write, poll, eventfd) and errno helpers are Kit.Linux's
/// <see cref="Sys"/>, shared with VPNKit.
/// </summary>
internal static unsafe partial class LibC
{
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int MAP_SHARED = 1;
    public const int MAP_PRIVATE = 2;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public const int E2BIG = 7;
    public const int FALLOC_FL_KEEP_SIZE = 1;
    public const int FALLOC_FL_PUNCH_HOLE = 2;
    public const int MADV_DONTFORK = 10;

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, nint arg);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, void* arg);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint addr, nuint length, int advice);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    public static partial int Mprotect(nint addr, nuint len, int prot);

    [LibraryImport("libc", EntryPoint = "getrandom", SetLastError = true)]
    public static partial nint GetRandom(void* buf, nuint count, uint flags);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    public static partial int Fallocate(nint fd, int mode, long offset, long len);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    public static partial long Syscall(long number, long a1, long a2, long a3);

    [LibraryImport("libc", EntryPoint = "getpid")]
    public static partial int GetPid();

    [LibraryImport("libc", EntryPoint = "sigaction", SetLastError = true)]
    public static partial int SigAction(int signum, SigActionStruct* act, SigActionStruct* oldact);

    [LibraryImport("libc", EntryPoint = "__libc_current_sigrtmin")]
    public static partial int CurrentSigRtMin();

    [LibraryImport("libc", EntryPoint = "__libc_current_sigrtmax")]
    public static partial int CurrentSigRtMax();

    [LibraryImport("libc", EntryPoint = "pthread_sigmask")]
    public static partial int PthreadSigMask(int how, ulong* set, ulong* oldset);

    private const long SYS_gettid = 186;
    private const long SYS_tgkill = 234;

    public static int GetTid() => (int)Syscall(SYS_gettid, 0, 0, 0);

    public static int TgKill(int tgid, int tid, int sig) => (int)Syscall(SYS_tgkill, tgid, tid, sig);

    /// <summary>glibc's x86-64 <c>struct sigaction</c>: handler, 1024-bit mask, flags, restorer (152 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct SigActionStruct
    {
        public nint Handler;
        public fixed ulong Mask[16];
        public int Flags;
        public int Padding;
        public nint Restorer;
    }
}
