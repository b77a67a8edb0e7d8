using System.Threading.Tasks.Sources;

namespace Kit.VpnKit.Nat;

/// <summary>
/// An auto-reset event for one async waiter that allocates nothing per wait. A Set with no waiter is latched.
/// Continuations run on the thread pool, never inline under the engine lock that calls Set.
/// </summary>
internal sealed class Signal : IValueTaskSource
{
    private readonly object _gate = new();
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };
    private bool _set;
    private bool _waiting;

    public ValueTask WaitAsync()
    {
        lock (_gate)
        {
            if (_set)
            {
                _set = false;
                return default;
            }
            _core.Reset();
            _waiting = true;
            return new ValueTask(this, _core.Version);
        }
    }

    /// <summary>
    /// Wakes the waiter. <paramref name="inline"/> runs its continuation on this thread; only callers that hold no
    /// lock (in particular not the engine lock) may ask for that.
    /// </summary>
    public void Set(bool inline = false)
    {
        bool fire;
        lock (_gate)
        {
            fire = _waiting;
            _waiting = false;
            _set = !fire;
        }
        // Completed outside the lock: an inline continuation must not run while holding it (it may wait on this
        // signal again, or take the engine lock while another thread holding that lock calls Set).
        if (fire)
        {
            _core.RunContinuationsAsynchronously = !inline;
            _core.SetResult(true);
        }
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);
    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);
    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
