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

    public void Set()
    {
        lock (_gate)
        {
            if (_waiting)
            {
                _waiting = false;
                _core.SetResult(true);
            }
            else
            {
                _set = true;
            }
        }
    }

    void IValueTaskSource.GetResult(short token) => _core.GetResult(token);
    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);
    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
