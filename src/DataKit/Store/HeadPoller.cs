namespace Kit.DataKit.Store;

/// <summary>
/// Notices branch changes made by other git writers (plain `git commit`, `git update-ref`) by polling the refs,
/// and pokes <see cref="GitStore.Changes"/> so head.live, reflog and tree.live readers wake up.
/// </summary>
public sealed class HeadPoller : IAsyncDisposable
{
    private readonly GitStore _store;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;

    public HeadPoller(GitStore store, TimeSpan interval)
    {
        _store = store;
        _loop = Task.Run(() => RunAsync(interval));
    }

    private async Task RunAsync(TimeSpan interval)
    {
        Dictionary<string, LibGit2Sharp.ObjectId> last = _store.SnapshotHeads();
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(_stop.Token).ConfigureAwait(false))
            {
                Dictionary<string, LibGit2Sharp.ObjectId> now;
                try
                {
                    now = _store.SnapshotHeads();
                }
                catch (Exception e) when (e is LibGit2Sharp.LibGit2SharpException or IOException or UnauthorizedAccessException)
                {
                    continue; // a ref being rewritten by git at this instant; try again next tick
                }
                if (!Same(last, now))
                {
                    _store.Changes.Poke();
                }
                last = now;
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    private static bool Same(Dictionary<string, LibGit2Sharp.ObjectId> a, Dictionary<string, LibGit2Sharp.ObjectId> b)
    {
        if (a.Count != b.Count)
        {
            return false;
        }
        foreach (KeyValuePair<string, LibGit2Sharp.ObjectId> pair in a)
        {
            if (!b.TryGetValue(pair.Key, out LibGit2Sharp.ObjectId? v) || v != pair.Value)
            {
                return false;
            }
        }
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        await _loop.ConfigureAwait(false);
        _stop.Dispose();
    }
}
