using System.Text;
using Kit.DataKit.Store;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Fs;

/// <summary>
/// The server's remotes (reference/datakit.md §1.7, extended): <c>remotes/NAME/{url,fetch,head}</c> as the original
/// has them, plus <c>push</c>, automatic push (<c>push-branches</c>) and replication (<c>sync-branches</c>,
/// <c>conflicts</c>), with <c>error</c> holding the last background failure. Unlike the original's per-connection
/// remotes these are server-wide: every session sees the same ones, so auto-push and replication act on commits
/// whoever makes them. They live in memory (not persisted), as the original's did. docs/datakit.md describes the files.
/// </summary>
/// <remarks>
/// Every URL is checked against the operator's <see cref="RemotePolicy"/> when written and again when used (EACCES).
/// Network work runs as git processes (<see cref="GitCli"/>) outside the store lock, each with the server's time
/// limit, and a fetch or push written through 9P is cancelled (git's process group killed) by the Tflush the 9P
/// server turns into the write's cancellation token.
/// </remarks>
public sealed class RemoteRegistry : IAsyncDisposable
{
    /// <summary>Linux ETIMEDOUT (not in NineP's Errno list).</summary>
    private const uint ETIMEDOUT = 110;

    private readonly GitStore _store;
    private readonly DataKitOptions _settings;
    private readonly RemoteOps _ops;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, Remote> _remotes = new(StringComparer.Ordinal);

    public RemoteRegistry(GitStore store, DataKitOptions settings)
    {
        _store = store;
        _settings = settings;
        _ops = new RemoteOps(new GitCli(store.GitDir, settings.RemoteTimeout, settings.RemoteEnvironment, store.SyncWrites));
    }

    public async ValueTask DisposeAsync()
    {
        Remote[] all;
        lock (_gate)
        {
            all = [.. _remotes.Values];
            _remotes.Clear();
        }
        foreach (Remote r in all)
        {
            await r.StopAsync().ConfigureAwait(false);
        }
    }

    /// <summary>The state of one remote; its background loop pushes and replicates the branches it names.</summary>
    private sealed class Remote(string name)
    {
        public string Name { get; set; } = name;
        public TextBuffer Url { get; } = new();
        public TextBuffer PushBranches { get; } = new();
        public TextBuffer SyncBranches { get; } = new();
        public CommandResult Fetch { get; } = new();
        public CommandResult Push { get; } = new();
        public string Head { get; set; } = "";
        public ChangeSignal Changed { get; } = new();
        /// <summary>Poked when url or a branch list changes, so the loop looks again at once.</summary>
        public ChangeSignal Wake { get; } = new();
        /// <summary>One git operation at a time per remote: two fetches into the same tracking ref would fight over its lock.</summary>
        public SemaphoreSlim Op { get; } = new(1, 1);
        /// <summary>Per branch: the local head last pushed (or tried) and the remote head last seen; read and written under <see cref="Op"/>.</summary>
        public Dictionary<string, ObjectId> Settled { get; } = new(StringComparer.Ordinal);
        /// <summary>Replicated branches whose remote head conflicts with the local one: branch → the remote commit (under Gate).</summary>
        public SortedDictionary<string, ObjectId> Conflicts { get; } = new(StringComparer.Ordinal);
        public string Error { get; set; } = "";
        public Lock Gate { get; } = new();
        public CancellationTokenSource Stop { get; } = new();
        public Task Loop { get; set; } = Task.CompletedTask;

        public async Task StopAsync()
        {
            await Stop.CancelAsync().ConfigureAwait(false);
            await Loop.ConfigureAwait(false);
        }
    }

    // ---------- the directory ----------

    internal SyntheticDir Directory() => new("remotes", "/remotes", () =>
    {
        lock (_gate)
        {
            return _remotes.Values.Select(r => (INode)RemoteDir(r)).ToArray();
        }
    }, n =>
    {
        lock (_gate)
        {
            return _remotes.TryGetValue(n, out Remote? r) ? RemoteDir(r) : null;
        }
    })
    {
        DirsOnly = true,
        Mkdir = n =>
        {
            CheckRemoteName(n);
            lock (_gate)
            {
                if (_remotes.ContainsKey(n))
                {
                    throw DkErrors.Exists();
                }
                var r = new Remote(n);
                _remotes[n] = r;
                r.Loop = Task.Run(() => RunAsync(r, r.Stop.Token));
                return RemoteDir(r);
            }
        },
        // Removable, unlike the original (quirk #16). The loop stops; a git process it runs is killed.
        Remove = n =>
        {
            Remote? r;
            lock (_gate)
            {
                if (!_remotes.Remove(n, out r))
                {
                    throw DkErrors.NotFound();
                }
            }
            r.Stop.Cancel();
        },
        Rename = (from, to) =>
        {
            CheckRemoteName(to);
            lock (_gate)
            {
                if (_remotes.ContainsKey(to))
                {
                    throw DkErrors.Exists();
                }
                if (!_remotes.Remove(from, out Remote? r))
                {
                    throw DkErrors.NotFound();
                }
                r.Name = to;
                _remotes[to] = r;
            }
        },
    };

    /// <summary>A remote's name becomes a ref component (refs/remotes/NAME/BRANCH): git's rules, and no '/'.</summary>
    private static void CheckRemoteName(string name)
    {
        if (name.Contains('/') || !GitStore.IsValidBranchName(name))
        {
            throw DkErrors.Invalid($"invalid remote name \"{name}\"");
        }
    }

    private SyntheticDir RemoteDir(Remote r)
    {
        string key = $"/remotes/{r.Name}";
        return SyntheticDir.Fixed(r.Name, key,
            new CheckedTextFile("url", key + "/url", r.Url, text =>
            {
                string url = text.Trim();
                if (url.Length > 0 && _settings.AllowRemotes.Refusal(url) is string why)
                {
                    throw new VfsException(Errno.EACCES, $"remote url refused: {why}");
                }
            }, r.Wake.Poke),
            new CommandFile("fetch", key + "/fetch", r.Fetch, (branch, ct) => FetchCommandAsync(r, branch, ct)),
            new StreamFile("head", key + "/head", () => new StreamSession(() => r.Head, r.Changed.NextAsync, v => v.Length == 0 ? "" : v + "\n")),
            new CommandFile("push", key + "/push", r.Push, (branch, ct) => PushCommandAsync(r, branch, ct)),
            new CheckedTextFile("push-branches", key + "/push-branches", r.PushBranches, CheckBranchList, r.Wake.Poke),
            new CheckedTextFile("sync-branches", key + "/sync-branches", r.SyncBranches, CheckBranchList, r.Wake.Poke),
            ReadOnlyFile.OfText("conflicts", key + "/conflicts", () =>
            {
                lock (r.Gate)
                {
                    return string.Concat(r.Conflicts.Select(c => $"{c.Key} {c.Value.Sha}\n"));
                }
            }),
            ReadOnlyFile.OfText("error", key + "/error", () =>
            {
                lock (r.Gate)
                {
                    return r.Error.Length == 0 ? "" : r.Error + "\n";
                }
            }));
    }

    /// <summary>Branches one list may name: each is looked up after every commit, so a client cannot make that unbounded.</summary>
    private const int MaxListedBranches = 256;

    private static void CheckBranchList(string text)
    {
        string[] lines = Lines(text);
        if (lines.Length > MaxListedBranches)
        {
            throw DkErrors.Invalid($"at most {MaxListedBranches} branches per list");
        }
        foreach (string line in lines)
        {
            GitStore.CheckBranchName(line);
        }
    }

    private static string[] Lines(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    /// <summary>The remote's URL if set and allowed now (the allow-list is checked at use as well as at write).</summary>
    private string UsableUrl(Remote r)
    {
        string url = r.Url.Text.Trim();
        if (url.Length == 0)
        {
            throw new VfsException(Errno.EINVAL, "error: remote url is not defined");
        }
        if (_settings.AllowRemotes.Refusal(url) is string why)
        {
            throw new VfsException(Errno.EACCES, $"remote url refused: {why}");
        }
        return url;
    }

    private async ValueTask<string> FetchCommandAsync(Remote r, string branch, CancellationToken ct)
    {
        string url = UsableUrl(r);
        if (branch.Length == 0)
        {
            throw new VfsException(Errno.EINVAL, "error: no head to fetch");
        }
        ObjectId? head = await WithRemoteAsync(r, "fetch", url, () => _ops.FetchAsync(url, r.Name, branch, ct), ct).ConfigureAwait(false);
        r.Head = head?.Sha ?? throw new VfsException(Errno.ENOENT, "error: no head to fetch");
        r.Changed.Poke();
        return "";
    }

    private async ValueTask<string> PushCommandAsync(Remote r, string branch, CancellationToken ct)
    {
        string url = UsableUrl(r);
        if (_store.GetHead(branch) is null)
        {
            throw new VfsException(Errno.ENOENT, $"error: branch {branch} has no commit to push");
        }
        PushOutcome outcome = await WithRemoteAsync(r, "push", url, () => _ops.PushAsync(url, branch, ct), ct).ConfigureAwait(false);
        return outcome == PushOutcome.Pushed
            ? ""
            : throw new VfsException(Errno.EAGAIN, $"error: push of {branch} rejected: the remote branch has commits this one lacks (fetch and merge first)");
    }

    /// <summary>Runs one client-requested git operation on the remote, turning git's failures into errnos.</summary>
    private async Task<T> WithRemoteAsync<T>(Remote r, string what, string url, Func<Task<T>> op, CancellationToken ct)
    {
        // Waiting behind the background loop is bounded by the same limit, and a Tflush ends the wait too.
        try
        {
            if (!await r.Op.WaitAsync(_settings.RemoteTimeout, ct).ConfigureAwait(false))
            {
                throw new VfsException(ETIMEDOUT, $"error: {what} timed out: remote {r.Name} is busy");
            }
        }
        catch (OperationCanceledException)
        {
            throw new VfsException(Errno.ECANCELED, $"error: {what} cancelled");
        }
        try
        {
            return await op().ConfigureAwait(false);
        }
        catch (GitTimeoutException e)
        {
            throw new VfsException(e.Cancelled ? Errno.ECANCELED : ETIMEDOUT, $"error: {what} {url}: {e.Message}");
        }
        catch (IOException e)
        {
            throw new VfsException(Errno.EIO, $"error: cannot {what} {url}: {e.Message}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new VfsException(Errno.EIO, $"error: cannot run git: {e.Message}");
        }
        finally
        {
            r.Op.Release();
        }
    }

    // ---------- auto-push and replication ----------

    /// <summary>
    /// One remote's background loop: after every branch change (the store's change signal fires on our commits and,
    /// through the head poller, on outside git writers), push the branches in push-branches and sync-branches whose
    /// head moved; every replicate interval, fetch each sync branch and bring the local branch in step.
    /// </summary>
    private async Task RunAsync(Remote r, CancellationToken stop)
    {
        long nextFetch = 0;
        while (!stop.IsCancellationRequested)
        {
            // Taken before the work, so a change made while it runs starts another round.
            Task changed = _store.Changes.NextAsync();
            Task woken = r.Wake.NextAsync();
            bool fetchDue = Environment.TickCount64 >= nextFetch;
            try
            {
                // error clears only when a round reached the remote and all went well: a rejected push-only branch
                // (not retried until its head moves) stays reported through the idle rounds after it.
                if (await RoundAsync(r, fetchDue, stop).ConfigureAwait(false))
                {
                    SetError(r, "");
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                // The loop's top: whatever one round met (a remote's failure, git missing, the store closing under
                // it) is reported in error and the next round tries again; nothing escapes a background task unseen.
                SetError(r, $"{DateTimeOffset.UtcNow:yyyy-MM-ddTHH:mm:ssZ} {e.Message}");
            }
            if (fetchDue)
            {
                nextFetch = Environment.TickCount64 + (long)_settings.ReplicateInterval.TotalMilliseconds;
            }
            long wait = Math.Max(1, nextFetch - Environment.TickCount64);
            try
            {
                await Task.WhenAny(changed, woken, Task.Delay(TimeSpan.FromMilliseconds(wait), stop)).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private static void SetError(Remote r, string text)
    {
        lock (r.Gate)
        {
            r.Error = text;
        }
    }

    /// <summary>One round; true if it fetched or pushed anything (and all of that succeeded).</summary>
    private async Task<bool> RoundAsync(Remote r, bool fetchDue, CancellationToken stop)
    {
        string[] sync = Lines(r.SyncBranches.Text);
        string[] push = [.. Lines(r.PushBranches.Text).Union(sync, StringComparer.Ordinal)];
        string url = r.Url.Text.Trim();
        if (push.Length == 0 || url.Length == 0 || _settings.AllowRemotes.Refusal(url) is not null)
        {
            return false;
        }
        await r.Op.WaitAsync(stop).ConfigureAwait(false);
        try
        {
            // Read again under Op: a client's fetch or push (which also takes Op) after it changed a list is a barrier,
            // so no round that began before the change can still push a branch it no longer names.
            sync = Lines(r.SyncBranches.Text);
            push = [.. Lines(r.PushBranches.Text).Union(sync, StringComparer.Ordinal)];
            url = r.Url.Text.Trim();
            if (url.Length == 0 || _settings.AllowRemotes.Refusal(url) is not null)
            {
                return false;
            }
            bool worked = fetchDue && sync.Length > 0;
            if (fetchDue)
            {
                foreach (string b in sync)
                {
                    await ReconcileAsync(r, url, b, stop).ConfigureAwait(false);
                }
            }
            foreach (string b in push)
            {
                worked |= await PushIfMovedAsync(r, url, b, sync.Contains(b, StringComparer.Ordinal), stop).ConfigureAwait(false);
            }
            return worked;
        }
        finally
        {
            r.Op.Release();
        }
    }

    /// <summary>Pushes the branch if its head moved since it was last pushed or seen on the remote; true if it pushed.</summary>
    private async Task<bool> PushIfMovedAsync(Remote r, string url, string branch, bool replicated, CancellationToken stop)
    {
        ObjectId? head = _store.GetHead(branch);
        if (head is null || (r.Settled.TryGetValue(branch, out ObjectId? settled) && settled == head) || StillInConflict(r, branch, head))
        {
            return false;
        }
        PushOutcome outcome = await _ops.PushAsync(url, branch, stop).ConfigureAwait(false);
        if (outcome == PushOutcome.Rejected && replicated)
        {
            // The other replica pushed first: take its commits (fast-forward or merge), then push the result.
            await ReconcileAsync(r, url, branch, stop).ConfigureAwait(false);
            head = _store.GetHead(branch);
            if (head is null || (r.Settled.TryGetValue(branch, out settled) && settled == head) || StillInConflict(r, branch, head))
            {
                return true;
            }
            outcome = await _ops.PushAsync(url, branch, stop).ConfigureAwait(false);
        }
        // A push-only branch the remote moved past is not forced (that would drop someone's commits): it is reported
        // in error and tried again when the local head next moves.
        r.Settled[branch] = head;
        if (outcome == PushOutcome.Rejected)
        {
            throw new IOException($"push of {branch} to {url} rejected: the remote branch has commits this one lacks");
        }
        return true;
    }

    /// <summary>True while the branch's recorded conflict commit is not yet merged into <paramref name="head"/>; clears it once it is.</summary>
    private bool StillInConflict(Remote r, string branch, ObjectId head)
    {
        ObjectId? theirs;
        lock (r.Gate)
        {
            if (!r.Conflicts.TryGetValue(branch, out theirs))
            {
                return false;
            }
        }
        if (!_store.IsAncestor(theirs, head))
        {
            return true;
        }
        lock (r.Gate)
        {
            r.Conflicts.Remove(branch);
        }
        return false;
    }

    /// <summary>
    /// Fetches a replicated branch and brings the local one in step: fast-forward when it is behind, nothing when
    /// ahead (the push follows), DataKit's 3-way merge (<see cref="TreeMerge"/>) into a merge commit when both moved.
    /// A merge with conflicts commits nothing: the remote head is kept on <see cref="RemoteOps.ConflictRef"/> and listed
    /// in conflicts until a transaction merges it (write the hash to its merge file, resolve, commit).
    /// </summary>
    private async Task ReconcileAsync(Remote r, string url, string branch, CancellationToken stop)
    {
        ObjectId? theirs = await _ops.FetchAsync(url, r.Name, branch, stop).ConfigureAwait(false);
        if (theirs is null)
        {
            return; // the remote lacks the branch: the push creates it
        }
        for (int attempt = 0; attempt < 5; attempt++)
        {
            ObjectId? ours = _store.GetHead(branch);
            if (ours == theirs || (ours is not null && _store.IsAncestor(theirs, ours)))
            {
                // Equal, or ahead: a push (if any is due) follows.
                if (ours == theirs)
                {
                    r.Settled[branch] = theirs;
                }
                return;
            }
            if (ours is null || _store.IsAncestor(ours, theirs))
            {
                if (_store.TrySetHead(branch, theirs, ours, $"datakit: replicate from {r.Name}"))
                {
                    r.Settled[branch] = theirs;
                    return;
                }
                continue; // a local commit landed meanwhile; look again
            }
            ObjectId? mergeBase = _store.MergeBase(ours, theirs);
            ObjectId? baseTree = mergeBase is null ? null : _store.GetCommit(mergeBase)?.Tree;
            var conflicts = new SortedDictionary<string, string>(StringComparer.Ordinal);
            WorkDir merged = TreeMerge.Merge(_store, baseTree, _store.GetCommit(ours)!.Tree, _store.GetCommit(theirs)!.Tree, conflicts);
            if (conflicts.Count == 0)
            {
                ObjectId commit = _store.WriteCommit(merged.Save(), [ours, theirs], $"Merge {r.Name}/{branch} (datakit replication)");
                if (_store.TrySetHead(branch, commit, ours, $"datakit: merge from {r.Name}"))
                {
                    return;
                }
                continue;
            }
            bool fresh;
            lock (r.Gate)
            {
                fresh = !r.Conflicts.TryGetValue(branch, out ObjectId? known) || known != theirs;
            }
            if (fresh)
            {
                // The ref first: once conflicts lists the commit, it is safe from gc.
                await _ops.SetRefAsync(RemoteOps.ConflictRef(r.Name, branch), theirs, stop).ConfigureAwait(false);
                lock (r.Gate)
                {
                    r.Conflicts[branch] = theirs;
                }
            }
            return; // reported in conflicts (not in error, which says what failed in the last round)
        }
    }
}

/// <summary>
/// A read-write text file whose whole new content is checked before it is kept (url against the allow-list, branch
/// lists against git's rules), so a refused write leaves the old content; <c>changed</c> runs after each kept change.
/// </summary>
internal sealed class CheckedTextFile : IFile
{
    private readonly TextBuffer _buffer;
    private readonly Action<string> _check;
    private readonly Action _changed;
    private readonly Lock _gate = new();

    public CheckedTextFile(string name, string qidKey, TextBuffer buffer, Action<string> check, Action changed)
    {
        Name = name;
        Path = QidPaths.Of("kv", qidKey);
        _buffer = buffer;
        _check = check;
        _changed = changed;
    }

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.File;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo((ulong)_buffer.Length));

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) => ValueTask.FromResult<IOpenFile>(new Open(this));

    public ValueTask TruncateAsync(ulong length, CancellationToken ct)
    {
        Update(b => b.Truncate(length));
        return ValueTask.CompletedTask;
    }

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct) => ValueTask.CompletedTask;

    private void Update(Action<TextBuffer> change)
    {
        lock (_gate)
        {
            var copy = new TextBuffer(_buffer.Text);
            change(copy);
            string text = copy.Text;
            _check(text);
            _buffer.Set(text);
        }
        _changed();
    }

    private sealed class Open(CheckedTextFile file) : IOpenFile
    {
        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> destination, CancellationToken ct) =>
            ValueTask.FromResult(file._buffer.Read(offset, destination.Span));

        public ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            file.Update(b => b.Write(offset, data.Span));
            return ValueTask.FromResult(data.Length);
        }
    }
}
