using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>A non-blocking eventfd (irqfd/ioeventfd endpoint).</summary>
public sealed class EventFd
{
    /// <summary>
    /// Blocks until at least one of the eventfds is signalled (or the timeout passes) and returns a bit mask of the
    /// ready ones (at most 64). The counters are not cleared: call <see cref="Drain"/>.
    /// </summary>
    public static ulong Wait(ReadOnlySpan<EventFd> fds, int timeoutMs)
    {
        int n = Math.Min(fds.Length, 64);
        Span<Sys.PollFd> set = stackalloc Sys.PollFd[n];
        for (int i = 0; i < n; i++)
        {
            set[i] = new Sys.PollFd { Fd = fds[i].Fd, Events = Sys.POLLIN };
        }
        int ready = Sys.Poll(set, timeoutMs);
        ulong mask = 0;
        for (int i = 0; ready > 0 && i < n; i++)
        {
            if ((set[i].Revents & Sys.POLLIN) != 0)
            {
                mask |= 1UL << i;
            }
        }
        return mask;
    }

    private readonly FdHandle _handle;

    internal EventFd(FdHandle handle) => _handle = handle;

    internal int Fd => _handle.Fd;

    /// <summary>Adds 1 to the counter (raises an irqfd).</summary>
    public void Signal() => _ = Sys.SignalEventFd(Fd);

    /// <summary>Reads and clears the counter; 0 when it was not signalled.</summary>
    public ulong Drain() => Sys.ReadEventFd(Fd);
}
