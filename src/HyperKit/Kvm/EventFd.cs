namespace Kit.HyperKit.Kvm;

/// <summary>A non-blocking eventfd (irqfd/ioeventfd endpoint).</summary>
public sealed unsafe class EventFd
{
    /// <summary>
    /// Blocks until at least one of the eventfds is signalled (or the timeout passes) and returns a bit mask of the
    /// ready ones (at most 64). The counters are not cleared: call <see cref="Drain"/>.
    /// </summary>
    public static ulong Wait(ReadOnlySpan<EventFd> fds, int timeoutMs)
    {
        int n = Math.Min(fds.Length, 64);
        LibCExtra.PollFd* set = stackalloc LibCExtra.PollFd[n];
        for (int i = 0; i < n; i++)
        {
            set[i] = new LibCExtra.PollFd { Fd = fds[i].Fd, Events = LibCExtra.POLLIN };
        }
        // SAFETY: set is a stack array of n pollfd records, the count passed to poll(2).
        int ready = LibCExtra.Poll(set, (nuint)n, timeoutMs);
        ulong mask = 0;
        for (int i = 0; ready > 0 && i < n; i++)
        {
            if ((set[i].Revents & LibCExtra.POLLIN) != 0)
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
    public void Signal()
    {
        ulong one = 1;
        // SAFETY: 8-byte stack buffer, the size eventfd requires.
        _ = LibC.Write(Fd, &one, 8);
    }

    /// <summary>Reads and clears the counter; 0 when it was not signalled.</summary>
    public ulong Drain()
    {
        ulong value = 0;
        // SAFETY: 8-byte stack buffer, the size eventfd requires.
        return LibC.Read(Fd, &value, 8) == 8 ? value : 0;
    }
}
