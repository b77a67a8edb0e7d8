using System.Runtime.InteropServices;

namespace Kit.HyperKit.VhostUser;

/// <summary>
/// The system calls vhost-user needs that .NET does not offer: file descriptors passed with SCM_RIGHTS
/// (vhost-user.rst, "Communication": memory regions and eventfds travel as ancillary data), poll on eventfds,
/// a raw socketpair for the tests' own frontend (a child process's pair is Kit.Linux.SocketPair), and FD_CLOEXEC.
/// x86-64 Linux layouts only (as the rest of HyperKit).
/// </summary>
internal static unsafe partial class VhostUserInterop
{
    public const int SOL_SOCKET = 1, SCM_RIGHTS = 1;
    public const int MSG_CTRUNC = 0x8, MSG_WAITALL = 0x100, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;
    public const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000;
    public const int F_GETFD = 1, F_SETFD = 2, F_GETFL = 3, F_SETFL = 4, FD_CLOEXEC = 1, O_NONBLOCK = 0x800;
    public const short POLLIN = 1, POLLERR = 8, POLLHUP = 0x10, POLLNVAL = 0x20;
    public const int EINTR = 4, EAGAIN = 11;
    /// <summary>Most descriptors one message may carry (VHOST_MEMORY_BASELINE_NREGIONS is 8); more are refused.</summary>
    public const int MaxFds = 8;

    [StructLayout(LayoutKind.Sequential)]
    private struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct MsgHdr
    {
        public void* Name;
        public uint NameLength;
        public IoVec* Iov;
        public nuint IovLength;
        public void* Control;
        public nuint ControlLength;
        public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    private const int CmsgHeader = 16; // struct cmsghdr { size_t len; int level; int type; } on LP64
    // Room for twice the descriptors we accept, so that "too many" is seen (and every one closed) rather than cut off.
    private const int ControlBytes = CmsgHeader + 4 * 2 * MaxFds;

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint RecvMsgNative(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static partial nint SendMsgNative(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static partial nint RecvNative(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPairNative(int domain, int type, int protocol, int* fds);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int Fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static partial int PollNative(PollFd* fds, nuint count, int timeoutMs);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadNative(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteNative(int fd, void* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initval, int flags);

    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    [LibraryImport("libc", EntryPoint = "lseek", SetLastError = true)]
    public static partial long Lseek(int fd, long offset, int whence);

    public const int SEEK_END = 2;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    public const int PROT_READ = 1, PROT_WRITE = 2, MAP_SHARED = 1;

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>
    /// Receives up to buffer.Length bytes and any descriptors sent with them (close-on-exec). Returns the byte count
    /// (0 at end of stream, negative errno on failure); <paramref name="fdCount"/> descriptors land in
    /// <paramref name="fds"/>. If more arrived than fit, all are closed and <paramref name="tooMany"/> is set.
    /// </summary>
    public static int ReceiveWithFds(int socket, Span<byte> buffer, Span<int> fds, out int fdCount, out bool tooMany)
    {
        fdCount = 0;
        tooMany = false;
        byte* control = stackalloc byte[ControlBytes];
        nint n;
        fixed (byte* data = buffer)
        {
            IoVec iov = new() { Base = data, Length = (nuint)buffer.Length };
            MsgHdr msg = new() { Iov = &iov, IovLength = 1, Control = control, ControlLength = ControlBytes };
            do
            {
                // SAFETY: msg points at stack storage (iov, control of ControlBytes) and at the pinned buffer, all
                // live for the call; the kernel writes at most the lengths given.
                n = RecvMsgNative(socket, &msg, MSG_CMSG_CLOEXEC);
            }
            while (n < 0 && Errno == EINTR);
            if (n < 0)
            {
                return -Errno;
            }
            CollectFds(control, (int)msg.ControlLength, fds, out fdCount, ref tooMany);
            if ((msg.Flags & MSG_CTRUNC) != 0)
            {
                tooMany = true;
            }
            if (tooMany)
            {
                CloseAll(fds[..fdCount]);
                fdCount = 0;
            }
        }
        return (int)n;
    }

    private static void CollectFds(byte* control, int length, Span<int> fds, out int count, ref bool tooMany)
    {
        count = 0;
        int offset = 0;
        // Walk every cmsghdr (CMSG_NXTHDR): each length is checked against what the kernel wrote.
        while (offset + CmsgHeader <= length)
        {
            // SAFETY: offset + CmsgHeader <= length <= ControlBytes: the header lies in the control buffer.
            long cmsgLen = *(long*)(control + offset);
            int level = *(int*)(control + offset + 8);
            int type = *(int*)(control + offset + 12);
            if (cmsgLen < CmsgHeader || cmsgLen > length - offset)
            {
                break;
            }
            if (level == SOL_SOCKET && type == SCM_RIGHTS)
            {
                int n = (int)(cmsgLen - CmsgHeader) / 4;
                for (int i = 0; i < n; i++)
                {
                    // SAFETY: i < n keeps the read within this cmsg's data, inside the control buffer.
                    int fd = *(int*)(control + offset + CmsgHeader + 4 * i);
                    if (count < fds.Length)
                    {
                        fds[count++] = fd;
                    }
                    else
                    {
                        tooMany = true;
                        _ = Close(fd);
                    }
                }
            }
            offset += (int)((cmsgLen + 7) & ~7L);
        }
    }

    /// <summary>Reads exactly buffer.Length bytes; false at end of stream or on error.</summary>
    public static bool ReceiveExact(int socket, Span<byte> buffer)
    {
        int done = 0;
        fixed (byte* p = buffer)
        {
            while (done < buffer.Length)
            {
                // SAFETY: p + done .. p + buffer.Length lies in the pinned buffer.
                nint n = RecvNative(socket, p + done, (nuint)(buffer.Length - done), MSG_WAITALL);
                if (n < 0 && Errno == EINTR)
                {
                    continue;
                }
                if (n <= 0)
                {
                    return false;
                }
                done += (int)n;
            }
        }
        return true;
    }

    /// <summary>Sends all of data, with descriptors on the first byte; false on error.</summary>
    public static bool SendWithFds(int socket, ReadOnlySpan<byte> data, ReadOnlySpan<int> fds)
    {
        if (fds.Length > 2 * MaxFds)
        {
            return false;
        }
        byte* control = stackalloc byte[ControlBytes];
        int done = 0;
        fixed (byte* p = data)
        {
            while (done < data.Length || (done == 0 && data.IsEmpty))
            {
                IoVec iov = new() { Base = p + done, Length = (nuint)(data.Length - done) };
                MsgHdr msg = new() { Iov = &iov, IovLength = 1 };
                if (done == 0 && fds.Length > 0)
                {
                    // SAFETY: CmsgHeader + 4 * fds.Length <= ControlBytes (checked above).
                    *(long*)control = CmsgHeader + 4 * fds.Length;
                    *(int*)(control + 8) = SOL_SOCKET;
                    *(int*)(control + 12) = SCM_RIGHTS;
                    for (int i = 0; i < fds.Length; i++)
                    {
                        *(int*)(control + CmsgHeader + 4 * i) = fds[i];
                    }
                    msg.Control = control;
                    msg.ControlLength = (nuint)((CmsgHeader + 4 * fds.Length + 7) & ~7);
                }
                // SAFETY: msg points at stack storage and the pinned data, live for the call.
                nint n = SendMsgNative(socket, &msg, MSG_NOSIGNAL);
                if (n < 0 && Errno == EINTR)
                {
                    continue;
                }
                if (n <= 0)
                {
                    return data.IsEmpty && n == 0;
                }
                done += (int)n;
            }
        }
        return true;
    }

    public static void CloseAll(ReadOnlySpan<int> fds)
    {
        foreach (int fd in fds)
        {
            if (fd >= 0)
            {
                _ = Close(fd);
            }
        }
    }

    /// <summary>A connected AF_UNIX stream pair, both close-on-exec.</summary>
    public static bool SocketPair(out int a, out int b)
    {
        int* fds = stackalloc int[2];
        // SAFETY: fds has room for the two descriptors socketpair writes.
        int r = SocketPairNative(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds);
        a = fds[0];
        b = fds[1];
        return r == 0;
    }

    public static bool IsCloseOnExec(int fd) => (Fcntl(fd, F_GETFD, 0) & FD_CLOEXEC) != 0;

    public static bool SetNonBlocking(int fd)
    {
        int flags = Fcntl(fd, F_GETFL, 0);
        return flags >= 0 && Fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0;
    }

    /// <summary>poll(2), EINTR retried as a zero result.</summary>
    public static int Poll(Span<PollFd> fds, int timeoutMs)
    {
        fixed (PollFd* p = fds)
        {
            // SAFETY: p points at fds.Length pinned entries.
            int r = PollNative(p, (nuint)fds.Length, timeoutMs);
            return r < 0 && Errno == EINTR ? 0 : r;
        }
    }

    /// <summary>Drains an eventfd's counter (non-blocking fd); true if it was signalled.</summary>
    public static bool ReadEventFd(int fd)
    {
        ulong value;
        // SAFETY: reads 8 bytes into a local.
        return ReadNative(fd, &value, 8) == 8;
    }

    /// <summary>Adds 1 to an eventfd (vhost-user's "call": the frontend turns it into the guest interrupt).</summary>
    public static bool SignalEventFd(int fd)
    {
        ulong one = 1;
        // SAFETY: writes 8 bytes from a local.
        return WriteNative(fd, &one, 8) == 8;
    }
}
