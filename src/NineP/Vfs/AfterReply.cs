namespace Kit.NineP.Vfs;

/// <summary>
/// Work a file system wants done once the reply it is answering has been sent, on the same thread, before the
/// connection reads its next request: a blob's read-ahead for the next Tread (DataKit's BlobCursor). Handed to the
/// thread pool instead, it costs a thread wake-up per Tread (context switches are the largest part of the server's
/// CPU in a 64 MiB read; docs/benchmarks.md, 2026-12-08). A 9P client that sends one Tread at a time cannot send the
/// next before it has the reply, so the work overlaps the client's handling of the reply instead of delaying a
/// request that is already there.
/// </summary>
/// <remarks>
/// Only a transport that runs handlers inline offers it (<see cref="Server.NinePConnection"/> while it answers a
/// request synchronously); elsewhere (the virtio-9p device, a handler that went asynchronous) <see cref="TryDefer"/>
/// returns false and the caller does the work its own way. Work must not throw and must not wait long: it runs in
/// the connection's request loop.
/// </remarks>
public static class AfterReply
{
    [ThreadStatic]
    private static Scope? t_scope; // the open offer on this thread, if any

    [ThreadStatic]
    private static Scope? t_spare; // reused by the thread's next request: no allocation per request

    /// <summary>Queues <paramref name="work"/> to run after the current reply is sent; false when no connection offers it here.</summary>
    public static bool TryDefer(Action<object> work, object state)
    {
        Scope? scope = t_scope;
        if (scope is null || scope.Count == Scope.Capacity)
        {
            return false;
        }
        scope.Add(work, state);
        return true;
    }

    /// <summary>Offers deferral on this thread until the scope is disposed, which runs what was deferred.</summary>
    internal static Scope Begin()
    {
        Scope scope = t_spare ?? new Scope();
        t_spare = null;
        scope.Outer = t_scope;
        t_scope = scope;
        return scope;
    }

    /// <summary>The deferred work of one request: a few entries.</summary>
    internal sealed class Scope : IDisposable
    {
        internal const int Capacity = 4;
        private readonly (Action<object> Work, object State)[] _items = new (Action<object>, object)[Capacity];

        public int Count { get; private set; }

        /// <summary>A scope this one was opened inside (a continuation that ran inline in another request), restored after.</summary>
        public Scope? Outer { get; set; }

        public void Add(Action<object> work, object state) => _items[Count++] = (work, state);

        /// <summary>Ends the offer on this thread, then runs the work in order.</summary>
        public void Dispose()
        {
            t_scope = Outer;
            Outer = null;
            try
            {
                for (int i = 0; i < Count; i++)
                {
                    _items[i].Work(_items[i].State);
                }
            }
            finally
            {
                Array.Clear(_items);
                Count = 0;
                t_spare ??= this;
            }
        }
    }
}
