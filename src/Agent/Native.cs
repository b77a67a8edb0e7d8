using System.Runtime.InteropServices;
using System.Text;

namespace Kit.Agent;

/// <summary>
/// Every system call the agent makes that .NET does not offer: posix_spawn (System.Diagnostics.Process has no PTY
/// and reaps children with its own SIGCHLD handler), PTYs, pipes, waitpid, kill, ioctl, reboot. Linux/glibc, x86-64
/// and arm64 (both LP64 little-endian; the constants below are the generic Linux values they share).
/// Invariant: native memory handed to posix_spawn is allocated and freed by <see cref="SpawnBlock"/> and lives for
/// the whole call; posix_spawn copies nothing it needs afterwards (it returns after the child's exec or failure).
/// </summary>
internal static unsafe partial class Native
{
    public const int EINTR = 4, ENOENT = 2, EACCES = 13, ENOEXEC = 8, EIO = 5, EAGAIN = 11, EPIPE = 32, ENOTDIR = 20;
    public const int O_RDONLY = 0, O_RDWR = 2, O_NOCTTY = 0x100, O_CLOEXEC = 0x80000;
    public const int X_OK = 1;
    public const int F_DUPFD_CLOEXEC = 1030;
    public const nuint TIOCSWINSZ = 0x5414, TIOCGPGRP = 0x540F;
    public const int LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC;
    public const int SIGKILL = 9;

    // glibc <spawn.h>.
    public const short POSIX_SPAWN_SETPGROUP = 0x02, POSIX_SPAWN_SETSIGDEF = 0x04, POSIX_SPAWN_SETSIGMASK = 0x08,
        POSIX_SPAWN_SETSID = 0x80;

    // Opaque glibc structures, over-allocated: posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336,
    // sigset_t 128 on x86-64 and arm64.
    public const int FileActionsSize = 256, SpawnAttrSize = 512, SigSetSize = 256;

    [LibraryImport("libc", EntryPoint = "posix_spawn")]
    public static partial int PosixSpawn(out int pid, byte* path, void* fileActions, void* attr, byte** argv, byte** envp);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_init")]
    public static partial int FileActionsInit(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_destroy")]
    public static partial int FileActionsDestroy(void* fileActions);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_adddup2")]
    public static partial int FileActionsAddDup2(void* fileActions, int fd, int newFd);

    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addopen")]
    public static partial int FileActionsAddOpen(void* fileActions, int fd, byte* path, int flags, uint mode);

    // glibc 2.29+; Debian 12 has 2.36.
    [LibraryImport("libc", EntryPoint = "posix_spawn_file_actions_addchdir_np")]
    public static partial int FileActionsAddChdir(void* fileActions, byte* path);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_init")]
    public static partial int SpawnAttrInit(void* attr);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_destroy")]
    public static partial int SpawnAttrDestroy(void* attr);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setflags")]
    public static partial int SpawnAttrSetFlags(void* attr, short flags);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigmask")]
    public static partial int SpawnAttrSetSigMask(void* attr, void* sigset);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setsigdefault")]
    public static partial int SpawnAttrSetSigDefault(void* attr, void* sigset);

    [LibraryImport("libc", EntryPoint = "posix_spawnattr_setpgroup")]
    public static partial int SpawnAttrSetPGroup(void* attr, int pgroup);

    [LibraryImport("libc", EntryPoint = "sigemptyset")]
    public static partial int SigEmptySet(void* sigset);

    [LibraryImport("libc", EntryPoint = "sigfillset")]
    public static partial int SigFillSet(void* sigset);

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    public static partial int Pipe2(int* fds, int flags);

    [LibraryImport("libc", EntryPoint = "posix_openpt", SetLastError = true)]
    public static partial int PosixOpenPt(int flags);

    [LibraryImport("libc", EntryPoint = "grantpt", SetLastError = true)]
    public static partial int GrantPt(int fd);

    [LibraryImport("libc", EntryPoint = "unlockpt", SetLastError = true)]
    public static partial int UnlockPt(int fd);

    [LibraryImport("libc", EntryPoint = "ptsname_r")]
    public static partial int PtsNameR(int fd, byte* buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, nuint request, void* argument);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int command, int argument);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "waitpid", SetLastError = true)]
    public static partial int WaitPid(int pid, out int status, int options);

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport("libc", EntryPoint = "access", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Access(string path, int mode);

    public const int AF_UNIX = 1, AF_VSOCK = 40, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000;
    public const int ECONNABORTED = 103, EMFILE = 24, ENFILE = 23, ENOBUFS = 105, ENOMEM = 12;

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(int fd, byte* address, int length);

    [LibraryImport("libc", EntryPoint = "listen", SetLastError = true)]
    public static partial int Listen(int fd, int backlog);

    [LibraryImport("libc", EntryPoint = "accept4", SetLastError = true)]
    public static partial int Accept4(int fd, void* address, void* length, int flags);

    [LibraryImport("libc", EntryPoint = "sync")]
    public static partial void Sync();

    [LibraryImport("libc", EntryPoint = "reboot", SetLastError = true)]
    public static partial int Reboot(int command);

    /// <summary>The C library's text for an errno value.</summary>
    public static string ErrorText(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    /// <summary>read(2), retried on EINTR: bytes read, 0 at end, or -errno.</summary>
    public static int ReadFd(int fd, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = Read(fd, p, (nuint)buffer.Length);
                if (n >= 0)
                {
                    return (int)n;
                }
                int errno = Marshal.GetLastPInvokeError();
                if (errno != EINTR)
                {
                    return -errno;
                }
            }
        }
    }

    /// <summary>Writes all of <paramref name="data"/> (retrying EINTR and short writes): 0, or -errno.</summary>
    public static int WriteAll(int fd, ReadOnlySpan<byte> data)
    {
        fixed (byte* start = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = Write(fd, start + done, (nuint)(data.Length - done));
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == EINTR)
                    {
                        continue;
                    }
                    return -errno;
                }
                done += (int)n;
            }
            return 0;
        }
    }

    /// <summary>A pipe whose both ends are close-on-exec (so no other child inherits them): (read, write).</summary>
    public static (int Read, int Write) Pipe()
    {
        int* fds = stackalloc int[2];
        if (Pipe2(fds, O_CLOEXEC) != 0)
        {
            throw new IOException($"pipe2: {ErrorText(Marshal.GetLastPInvokeError())}");
        }
        return (fds[0], fds[1]);
    }

    /// <summary>A new PTY: the master (close-on-exec, not our controlling terminal) and the slave's path.</summary>
    public static (int Master, string SlavePath) OpenPty(ushort rows, ushort cols)
    {
        int master = PosixOpenPt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0)
        {
            throw new IOException($"posix_openpt: {ErrorText(Marshal.GetLastPInvokeError())}");
        }
        byte* name = stackalloc byte[128];
        if (GrantPt(master) != 0 || UnlockPt(master) != 0 || PtsNameR(master, name, 128) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            _ = Close(master);
            throw new IOException($"pty setup: {ErrorText(errno)}");
        }
        SetWindowSize(master, rows, cols);
        return (master, Marshal.PtrToStringUTF8((nint)name)!);
    }

    /// <summary>TIOCSWINSZ: the terminal's size; the kernel sends SIGWINCH to its foreground group when it changes.</summary>
    public static bool SetWindowSize(int master, ushort rows, ushort cols)
    {
        // struct winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; }
        ushort* size = stackalloc ushort[4];
        size[0] = rows;
        size[1] = cols;
        size[2] = 0;
        size[3] = 0;
        return Ioctl(master, TIOCSWINSZ, size) == 0;
    }

    /// <summary>TIOCGPGRP on the master: the terminal's foreground process group, or -1.</summary>
    public static int ForegroundGroup(int master)
    {
        int group;
        return Ioctl(master, TIOCGPGRP, &group) == 0 ? group : -1;
    }

    /// <summary>A close-on-exec duplicate of <paramref name="fd"/>, or -1.</summary>
    public static int Dup(int fd) => Fcntl(fd, F_DUPFD_CLOEXEC, 0);

    /// <summary>waitpid(2) for one child, retried on EINTR: the raw wait status, or -1 when it cannot be waited for.</summary>
    public static int WaitForExit(int pid)
    {
        while (true)
        {
            if (WaitPid(pid, out int status, 0) == pid)
            {
                return status;
            }
            if (Marshal.GetLastPInvokeError() != EINTR)
            {
                return -1;
            }
        }
    }

    /// <summary>
    /// Native memory for one posix_spawn call: NUL-terminated UTF-8 strings, pointer arrays, the opaque attribute
    /// and file-action structures. Everything is freed together on dispose.
    /// </summary>
    public sealed class SpawnBlock : IDisposable
    {
        private readonly List<nint> _allocations = [];

        public byte* String(string value)
        {
            int length = Encoding.UTF8.GetByteCount(value);
            byte* p = (byte*)Alloc(length + 1);
            Encoding.UTF8.GetBytes(value, new Span<byte>(p, length));
            p[length] = 0;
            return p;
        }

        /// <summary>A NULL-terminated array of C strings (argv, envp).</summary>
        public byte** Strings(IReadOnlyList<string> values)
        {
            byte** array = (byte**)Alloc((values.Count + 1) * sizeof(nint));
            for (int i = 0; i < values.Count; i++)
            {
                array[i] = String(values[i]);
            }
            array[values.Count] = null;
            return array;
        }

        public void* Alloc(int size)
        {
            void* p = NativeMemory.AllocZeroed((nuint)size);
            _allocations.Add((nint)p);
            return p;
        }

        public void Dispose()
        {
            foreach (nint p in _allocations)
            {
                NativeMemory.Free((void*)p);
            }
            _allocations.Clear();
        }
    }
}
