using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Kit.Linux;
using Microsoft.Win32.SafeHandles;

namespace Kit.VpnKit.Links;

/// <summary>
/// A Linux epoll instance (epoll(7)) plus an eventfd (eventfd(2)) that other threads write to wake the waiter.
/// The gateway's event loop waits here for the TAP device and every host TCP socket at once, so a frame or a
/// socket's readiness is handled on the thread that was woken, with no hand-off to another thread.
/// Each registration carries a 64-bit token the caller chooses; it comes back with the events.
/// P/Invoke only (no unsafe code): arrays of struct epoll_event are passed as bytes and decoded here; the eventfd
/// calls are Kit.Linux's <see cref="Sys"/>.
/// </summary>
internal sealed partial class Epoll : IDisposable
{
    public const uint In = 0x001;       // EPOLLIN
    public const uint Out = 0x004;      // EPOLLOUT
    public const uint Err = 0x008;      // EPOLLERR
    public const uint Hup = 0x010;      // EPOLLHUP
    public const uint RdHup = 0x2000;   // EPOLLRDHUP
    public const uint EdgeTriggered = 1u << 31; // EPOLLET

    /// <summary>The token of the wake-up eventfd's events.</summary>
    public const ulong WakeToken = ulong.MaxValue;

    private const int CtlAdd = 1;
    private const int CtlDel = 2;
    private const int CtlMod = 3;
    private const int Cloexec = 0x80000;      // EPOLL_CLOEXEC (= O_CLOEXEC)

    // struct epoll_event is packed on x86-64 (12 bytes: events, then data at offset 4) and naturally aligned
    // elsewhere (16 bytes, data at offset 8): see <sys/epoll.h>, __EPOLL_PACKED.
    private static readonly int Stride = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 12 : 16;
    private static readonly int DataAt = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 4 : 8;

    private readonly SafeFileHandle _ep;
    private readonly SafeFileHandle _wake;
    private readonly byte[] _one = new byte[16];
    private readonly object _ctlGate = new();

    public Epoll()
    {
        int ep = epoll_create1(Cloexec);
        if (ep < 0)
        {
            throw new IOException($"epoll_create1: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        _ep = new SafeFileHandle(ep, ownsHandle: true);
        int ev = Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK);
        if (ev < 0)
        {
            string err = Marshal.GetLastPInvokeErrorMessage();
            _ep.Dispose();
            throw new IOException($"eventfd: {err}");
        }
        _wake = new SafeFileHandle(ev, ownsHandle: true);
        Add((int)_wake.DangerousGetHandle(), In, WakeToken);
    }

    /// <summary>Starts watching <paramref name="fd"/>; false if the kernel refused (the fd is closed or not pollable).</summary>
    public bool Add(int fd, uint events, ulong token) => Ctl(CtlAdd, fd, events, token);

    public bool Modify(int fd, uint events, ulong token) => Ctl(CtlMod, fd, events, token);

    /// <summary>Stops watching <paramref name="fd"/> (closing the fd does this too, when it was the last reference).</summary>
    public void Remove(int fd) => Ctl(CtlDel, fd, 0, 0);

    private bool Ctl(int op, int fd, uint events, ulong token)
    {
        // epoll_ctl is thread-safe in the kernel; the shared scratch buffer is not.
        lock (_ctlGate)
        {
            Span<byte> e = _one.AsSpan(0, Stride);
            e.Clear();
            BinaryPrimitives.WriteUInt32LittleEndian(e, events);
            BinaryPrimitives.WriteUInt64LittleEndian(e.Slice(DataAt), token);
            try
            {
                return epoll_ctl(_ep, op, fd, _one) == 0;
            }
            catch (ObjectDisposedException)
            {
                return false; // The loop has stopped (the server is being disposed).
            }
        }
    }

    /// <summary>A buffer for up to <paramref name="max"/> events, to pass to <see cref="Wait"/>.</summary>
    public static byte[] NewEventBuffer(int max) => new byte[max * Stride];

    /// <summary>
    /// Waits up to <paramref name="timeoutMs"/> (-1: forever) and returns how many events are in
    /// <paramref name="events"/> (read them with <see cref="EventAt"/>); 0 on timeout or interruption.
    /// </summary>
    public int Wait(byte[] events, int timeoutMs)
    {
        int n = epoll_wait(_ep, events, events.Length / Stride, timeoutMs);
        if (n < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Sys.EINTR)
            {
                return 0;
            }
            throw new IOException($"epoll_wait: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        return n;
    }

    public static (uint Events, ulong Token) EventAt(byte[] events, int i)
    {
        ReadOnlySpan<byte> e = events.AsSpan(i * Stride, Stride);
        return (BinaryPrimitives.ReadUInt32LittleEndian(e), BinaryPrimitives.ReadUInt64LittleEndian(e.Slice(DataAt)));
    }

    /// <summary>Makes the current or next <see cref="Wait"/> return (the eventfd's counter stays set until cleared).</summary>
    public void Wake()
    {
        try
        {
            _ = Sys.SignalEventFd(_wake);
        }
        catch (ObjectDisposedException)
        {
            // Stopped: nobody waits any more.
        }
    }

    /// <summary>Called by the waiter when the wake token fired: resets the eventfd's counter.</summary>
    public void ClearWake() => _ = Sys.ReadEventFd(_wake);

    public void Dispose()
    {
        _wake.Dispose();
        _ep.Dispose();
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_create1(int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_ctl(SafeFileHandle epfd, int op, int fd, byte[] ev);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int epoll_wait(SafeFileHandle epfd, byte[] events, int maxEvents, int timeout);
}
