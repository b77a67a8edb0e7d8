using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    // asm-generic/poll.h.
    public const short POLLIN = 1, POLLERR = 8, POLLHUP = 0x10, POLLNVAL = 0x20;

    /// <summary>struct pollfd (poll(2)).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short Revents;
    }

    /// <summary>
    /// poll(2) over <paramref name="fds"/> for up to <paramref name="timeoutMs"/> (-1: forever): how many have events,
    /// 0 on timeout or when a signal interrupted the wait (EINTR), -1 with errno on failure.
    /// </summary>
    public static int Poll(Span<PollFd> fds, int timeoutMs)
    {
        int r = PollNative(fds, (nuint)fds.Length, timeoutMs);
        return r < 0 && LastErrno == EINTR ? 0 : r;
    }

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    private static partial int PollNative(Span<PollFd> fds, nuint count, int timeoutMs);
}
