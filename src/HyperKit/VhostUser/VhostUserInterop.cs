using System.Runtime.InteropServices;
using Kit.Linux;

namespace Kit.HyperKit.VhostUser;

/// <summary>
/// The system calls vhost-user needs that .NET does not offer: file descriptors passed with SCM_RIGHTS
/// (vhost-user.rst, "Communication": memory regions and eventfds travel as ancillary data), the frontend's memory
/// mapped from its fds. Poll, eventfds, close, fcntl and socketpair are Kit.Linux's <see cref="Sys"/>.
/// x86-64 Linux layouts only (as the rest of HyperKit).
/// </summary>
internal static unsafe partial class VhostUserInterop
{
    public const int SOL_SOCKET = 1, SCM_RIGHTS = 1;
    public const int MSG_CTRUNC = 0x8, MSG_WAITALL = 0x100, MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;
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

    private const int CmsgHeader = 16; // struct cmsghdr { size_t len; int level; int type; } on LP64
    // Room for twice the descriptors we accept, so that "too many" is seen (and every one closed) rather than cut off.
    private const int ControlBytes = CmsgHeader + 4 * 2 * MaxFds;

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint RecvMsgNative(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    private static partial nint SendMsgNative(int fd, MsgHdr* msg, int flags);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static partial nint RecvNative(int fd, byte* buffer, nuint length, int flags);

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
            while (n < 0 && Sys.LastErrno == Sys.EINTR);
            if (n < 0)
            {
                return -Sys.LastErrno;
            }
            CollectFds(control, (int)msg.ControlLength, fds, out fdCount, ref tooMany);
            if ((msg.Flags & MSG_CTRUNC) != 0)
            {
                tooMany = true;
            }
            if (tooMany)
            {
                Sys.CloseAll(fds[..fdCount]);
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
                        _ = Sys.Close(fd);
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
                if (n < 0 && Sys.LastErrno == Sys.EINTR)
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
                if (n < 0 && Sys.LastErrno == Sys.EINTR)
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
}
