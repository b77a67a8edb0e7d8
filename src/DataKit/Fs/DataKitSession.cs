using System.Text;
using Kit.DataKit.Store;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Fs;

/// <summary>
/// One connection's DataKit tree (reference/datakit.md §1). The data (branches and objects) is shared through the
/// store; transactions, remotes, command results and branches made by mkdir without a commit are this connection's
/// alone and vanish with it, as in the original.
/// </summary>
public sealed class DataKitSession : IFileSystemSession
{
    private readonly GitStore _store;
    private readonly Lock _gate = new();
    private readonly Dictionary<string, BranchState> _branches = new(StringComparer.Ordinal);
    private readonly RemoteRegistry _remotes;
    private readonly bool _ownsRemotes;
    private readonly IDirectory _root;

    private readonly DataKitOptions _settings;

    /// <param name="remotes">The server's remotes (Remotes.cs), shared by all its sessions; a session made without a
    /// server gets its own, which goes with it.</param>
    public DataKitSession(GitStore store, LogSources? logSources = null, DataKitOptions? settings = null, RemoteRegistry? remotes = null)
    {
        _store = store;
        _settings = settings ?? DataKitOptions.Default;
        _ownsRemotes = remotes is null;
        _remotes = remotes ?? new RemoteRegistry(store, _settings);
        logSources ??= new LogSources(Microsoft.Extensions.Logging.LogLevel.Warning);
        _root = SyntheticDir.Fixed("", "/",
            BranchesDir(),
            SyntheticDir.Fixed("debug", "/debug", DebugSources(logSources)),
            SnapshotsDir(),
            TreesDir(),
            CommitsDir(),
            _remotes.Directory());
    }

    public ValueTask<IDirectory> AttachAsync(string uname, string aname, CancellationToken ct) =>
        aname is "" or "/" ? ValueTask.FromResult(_root) : throw DkErrors.NotFound();

    public ValueTask DisposeAsync() => _ownsRemotes ? _remotes.DisposeAsync() : ValueTask.CompletedTask;

    private sealed class BranchState(string name)
    {
        public string Name { get; set; } = name;
        public CommandResult FastForward { get; } = new();
        public Dictionary<string, Transaction> Transactions { get; } = new(StringComparer.Ordinal);
    }

    // ---------- /debug (§1.8) ----------

    private static SyntheticDir DebugSources(LogSources sources)
    {
        INode Dir(LogSources.Source s)
        {
            string key = $"/debug/src/{s.Name}";
            return SyntheticDir.Fixed(s.Name, key,
                ReadOnlyFile.OfText("doc", key + "/doc", () => s.Doc + "\n"),
                new LevelFile(key + "/level", s));
        }
        return new SyntheticDir("src", "/debug/src", () => sources.All.Select(Dir).ToArray(), n => sources.Find(n) is { } s ? Dir(s) : null);
    }

    /// <summary>
    /// debug/src/S/level: reads the level name and a newline; writing a name sets it. Writing nothing (the truncate
    /// step of `echo x > level`) makes it read empty until the next write, so a shorter name does not merge with the old.
    /// </summary>
    private sealed class LevelFile(string key, LogSources.Source source) : IFile
    {
        private bool _blank;

        public LogSources.Source Source => source;
        public string Name => "level";
        public ulong Path { get; } = QidPaths.Of("level", key);
        public NodeKind Kind => NodeKind.File;

        private byte[] Content() => _blank ? [] : Encoding.UTF8.GetBytes(LogSources.Print(source.Level) + "\n");

        public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo((ulong)Content().Length));

        public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) => ValueTask.FromResult<IOpenFile>(new Open(this));

        public ValueTask TruncateAsync(ulong length, CancellationToken ct)
        {
            if (length == 0)
            {
                _blank = true;
            }
            return ValueTask.CompletedTask;
        }

        private sealed class Open(LevelFile file) : IOpenFile
        {
            public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct) =>
                ValueTask.FromResult(DkErrors.ReadAt(file.Content(), offset, buffer.Span));

            public ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
            {
                string text = Encoding.UTF8.GetString(data.Span).Trim();
                if (!LogSources.TryParse(text, out Microsoft.Extensions.Logging.LogLevel level))
                {
                    throw DkErrors.Invalid($"invalid log level \"{text}\"");
                }
                file.Source.Level = level;
                file._blank = false;
                return ValueTask.FromResult(data.Length);
            }
        }
    }

    // ---------- /branch ----------

    private SyntheticDir BranchesDir() => new("branch", "/branch", ListBranches, LookupBranch)
    {
        DirsOnly = true,
        Mkdir = name =>
        {
            // git's refname rules (BranchName): EINVAL with the reason, so `mkdir branch/HEAD` says why.
            GitStore.CheckBranchName(name);
            return BranchDir(State(name));
        },
        Remove = name =>
        {
            _store.DeleteBranch(name);
            lock (_gate)
            {
                _branches.Remove(name);
            }
        },
        Rename = (from, to) =>
        {
            GitStore.CheckBranchName(to);
            if (_store.BranchExists(to))
            {
                throw DkErrors.IsDir();
            }
            _store.RenameBranch(from, to);
            lock (_gate)
            {
                if (_branches.Remove(from, out BranchState? s))
                {
                    s.Name = to;
                    _branches[to] = s;
                }
            }
        },
    };

    private BranchState State(string name)
    {
        lock (_gate)
        {
            if (!_branches.TryGetValue(name, out BranchState? s))
            {
                s = new BranchState(name);
                _branches[name] = s;
            }
            return s;
        }
    }

    private IReadOnlyList<INode> ListBranches()
    {
        var names = new SortedSet<string>(_store.ListBranches(), StringComparer.Ordinal);
        lock (_gate)
        {
            names.UnionWith(_branches.Keys);
        }
        return names.Select(n => (INode)BranchDir(State(n))).ToArray();
    }

    private INode? LookupBranch(string name)
    {
        if (!GitStore.IsValidBranchName(name))
        {
            return null; // no such branch can exist (ENOENT)
        }
        bool cached;
        lock (_gate)
        {
            cached = _branches.ContainsKey(name);
        }
        return cached || _store.BranchExists(name) ? BranchDir(State(name)) : null;
    }

    private string HeadText(string branch) => _store.GetHead(branch)?.Sha ?? "";

    private ObjectId? HeadTree(string branch)
    {
        ObjectId? head = _store.GetHead(branch);
        return head is null ? null : _store.GetCommit(head)?.Tree;
    }

    private SyntheticDir BranchDir(BranchState state)
    {
        string b = state.Name;
        string key = $"/branch/{b}";
        INode[] children =
        [
            ReadOnlyFile.OfText("head", key + "/head", () => HeadText(b) + "\n"),
            new StreamFile("head.live", key + "/head.live", () => new StreamSession(() => HeadText(b), _store.Changes.NextAsync, v => v + "\n")),
            new StreamFile("reflog", key + "/reflog", () => new StreamSession(() => HeadText(b), _store.Changes.NextAsync, v => v + "\n", "\n")),
            new CommandFile("fast-forward", key + "/fast-forward", state.FastForward, (text, _) => ValueTask.FromResult(FastForward(b, text))),
            new GitTreeDir(_store, "ro", key + "/ro", () => HeadTree(b), []),
            WatchDir(b, []),
            TransactionsDir(state),
            // Documented in the original's 9p.md but never built (quirk #11): changes from <commit> to the head.
            DiffDir(key + "/diff", other => BranchDiff(b, other)),
        ];
        return SyntheticDir.Fixed(b, key, children);
    }

    private string BranchDiff(string branch, string other)
    {
        if (!GitStore.TryParseHash(other, out ObjectId? o, out string e))
        {
            throw DkErrors.Invalid(e);
        }
        CommitInfo from = _store.GetCommit(o!) ?? throw DkErrors.NotFound();
        ObjectId to = HeadTree(branch) ?? GitStore.EmptyTree;
        return string.Concat(TreeDiff.Diff(_store, from.Tree, to).Select(l => l + "\n"));
    }

    private string FastForward(string branch, string text)
    {
        if (!GitStore.TryParseHash(text, out ObjectId? id, out string error))
        {
            throw DkErrors.Invalid(error);
        }
        if (_store.GetCommit(id!) is null)
        {
            throw DkErrors.NotFound();
        }
        for (int attempt = 0; attempt < 20; attempt++)
        {
            ObjectId? head = _store.GetHead(branch);
            if (head == id)
            {
                return "";
            }
            if (head is not null && !_store.IsAncestor(head, id!))
            {
                throw new VfsException(Errno.EAGAIN, "not-fast-forward");
            }
            if (_store.TrySetHead(branch, id!, head, "datakit: fast-forward"))
            {
                return "";
            }
        }
        throw new VfsException(Errno.EAGAIN, "not-fast-forward");
    }

    // ---------- watch/ (§3.3) ----------

    private string TreeLine(string branch, string[] path)
    {
        ObjectId? tree = HeadTree(branch);
        if (tree is null)
        {
            return path.Length == 0 ? $"D-{GitStore.EmptyTree.Sha}" : "";
        }
        return _store.Resolve(tree, path)?.Line ?? "";
    }

    private SyntheticDir WatchDir(string branch, string[] path)
    {
        string key = $"/branch/{branch}/watch/" + string.Join('/', path);
        string name = path.Length == 0 ? "watch" : path[^1] + ".node";
        var live = new StreamFile("tree.live", key + "/tree.live", () => new StreamSession(() => TreeLine(branch, path), _store.Changes.NextAsync, v => v + "\n"));
        return new SyntheticDir(name, key, () =>
        {
            var nodes = new List<INode> { live };
            ObjectId? tree = HeadTree(branch);
            if (tree is not null && _store.Resolve(tree, path) is { Kind: EntryKind.Dir } d)
            {
                foreach (GitEntry e in _store.ReadTree(d.Id))
                {
                    nodes.Add(WatchDir(branch, [.. path, e.Name]));
                }
            }
            return nodes;
        }, n =>
        {
            if (n == "tree.live")
            {
                return live;
            }
            // Any <x>.node can be looked up, so paths can be watched before they exist.
            return n.EndsWith(".node", StringComparison.Ordinal) && n.Length > 5 ? WatchDir(branch, [.. path, n[..^5]]) : null;
        });
    }

    // ---------- transactions/ (§1.5) ----------

    private SyntheticDir TransactionsDir(BranchState state)
    {
        string key = $"/branch/{state.Name}/transactions";
        return new SyntheticDir("transactions", key, () =>
        {
            lock (_gate)
            {
                return state.Transactions.Values.Select(t => (INode)TransactionDir(state, t)).ToArray();
            }
        }, n =>
        {
            lock (_gate)
            {
                return state.Transactions.TryGetValue(n, out Transaction? t) ? TransactionDir(state, t) : null;
            }
        })
        {
            DirsOnly = true,
            Mkdir = n =>
            {
                lock (_gate)
                {
                    if (state.Transactions.ContainsKey(n))
                    {
                        throw DkErrors.Exists();
                    }
                    var t = new Transaction(_store, state.Name, n, $"{key}/{n}");
                    state.Transactions[n] = t;
                    return TransactionDir(state, t);
                }
            },
        };
    }

    private void Drop(BranchState state, Transaction t)
    {
        lock (_gate)
        {
            if (state.Transactions.TryGetValue(t.Name, out Transaction? current) && ReferenceEquals(current, t))
            {
                state.Transactions.Remove(t.Name);
            }
        }
    }

    private SyntheticDir TransactionDir(BranchState state, Transaction t)
    {
        string key = t.QidKey;
        var fixedChildren = new List<INode>
        {
            new RwDir(t, []),
            new BufferFile("msg", key + "/msg", t.Msg),
            new BufferFile("parents", key + "/parents", t.Parents),
            new CommandFile("ctl", key + "/ctl", t.CtlResult, (text, _) =>
            {
                switch (text)
                {
                    case "commit":
                        t.Commit();
                        Drop(state, t);
                        return ValueTask.FromResult("");
                    case "close":
                        Drop(state, t);
                        return ValueTask.FromResult("");
                    default:
                        throw DkErrors.Invalid($"Unknown command \"{text}\"");
                }
            }),
            new CommandFile("merge", key + "/merge", t.MergeResult, (text, _) =>
            {
                t.Merge(text);
                return ValueTask.FromResult("ok");
            }),
            new ReadOnlyFile("origin", key + "/origin", () => []),
            DiffDir(key + "/diff", t.Diff),
        };
        IReadOnlyList<INode> List()
        {
            var nodes = new List<INode>(fixedChildren);
            if (t.Conflicts is not null)
            {
                nodes.Add(new GitTreeDir(_store, "ours", key + "/ours", () => t.Ours, []));
                nodes.Add(new GitTreeDir(_store, "theirs", key + "/theirs", () => t.Theirs, []));
                nodes.Add(new GitTreeDir(_store, "base", key + "/base", () => t.Base, []));
                nodes.Add(ReadOnlyFile.OfText("conflicts", key + "/conflicts", () =>
                {
                    lock (t.Gate)
                    {
                        var sb = new StringBuilder();
                        foreach (string p in t.Conflicts.Keys)
                        {
                            sb.Append(p).Append('\n');
                        }
                        return sb.ToString();
                    }
                }));
            }
            return nodes;
        }
        return new SyntheticDir(t.Name, key, List, n => List().FirstOrDefault(c => c.Name == n));
    }

    /// <summary>A hidden directory: <c>diff/&lt;commit&gt;</c> resolves, <c>ls</c> is empty.</summary>
    private static SyntheticDir DiffDir(string key, Func<string, string> diff) =>
        new("diff", key, () => [], n =>
        {
            string text = diff(n); // throws invalid-hash / ENOENT like the original
            return new ReadOnlyFile(n, $"{key}/{n}", () => Encoding.UTF8.GetBytes(diff(n)));
        });

    // ---------- snapshots/, trees/, commits/ (§1.6) ----------

    private SyntheticDir SnapshotsDir() => new("snapshots", "/snapshots", () => [], n =>
    {
        if (!GitStore.TryParseHash(n, out ObjectId? id, out string error))
        {
            // The original sent a generic error here; ENOENT lets `ls` report it sensibly (quirk #18), text kept.
            throw new VfsException(Errno.ENOENT, error);
        }
        CommitInfo? c = _store.GetCommit(id!);
        if (c is null)
        {
            return null;
        }
        string key = $"/snapshots/{c.Id.Sha}";
        return SyntheticDir.Fixed(n, key,
            ReadOnlyFile.OfText("hash", key + "/hash", () => n),
            ReadOnlyFile.OfText("msg", key + "/msg", () => c.Message + "\n"),
            ReadOnlyFile.OfText("parents", key + "/parents", () => string.Concat(c.Parents.Select(p => p.Sha + "\n"))),
            new GitTreeDir(_store, "ro", key + "/ro", () => c.Tree, []),
            DiffDir(key + "/diff", other =>
            {
                if (!GitStore.TryParseHash(other, out ObjectId? o, out string e))
                {
                    throw DkErrors.Invalid(e);
                }
                CommitInfo from = _store.GetCommit(o!) ?? throw DkErrors.NotFound();
                return string.Concat(TreeDiff.Diff(_store, from.Tree, c.Tree).Select(l => l + "\n"));
            }));
    });

    private SyntheticDir TreesDir() => new("trees", "/trees", () => [], n =>
    {
        if (n.Length != 42 || n[1] != '-' || !GitStore.TryParseHash(n[2..], out ObjectId? id, out _))
        {
            return null;
        }
        switch (n[0])
        {
            case 'D':
                return _store.TreeExists(id!) || id == GitStore.EmptyTree ? new GitTreeDir(_store, n, "/trees/" + n, () => id, []) : null;
            case 'F' or 'X' or 'L':
                if (!_store.BlobExists(id!))
                {
                    return null;
                }
                EntryKind kind = n[0] switch { 'X' => EntryKind.Exec, 'L' => EntryKind.Link, _ => EntryKind.File };
                return new GitBlobFile(_store, n, "/trees/" + n, kind, () => id, [], new ResolvedPath(id!, new GitEntry(n, kind, id!))); // the memo always hits: its "root" is the blob itself
            default:
                return null;
        }
    });

    private SyntheticDir CommitsDir() => new("commits", "/commits", () => [], n =>
    {
        if (!GitStore.TryParseHash(n, out ObjectId? id, out _) || _store.GetCommit(id!) is not CommitInfo c)
        {
            return null;
        }
        // Clients only check existence; the body is our own JSON rendering of the commit.
        string json = System.Text.Json.JsonSerializer.Serialize(
            new CommitJson(c.Id.Sha, c.Tree.Sha, [.. c.Parents.Select(p => p.Sha)], c.Message, c.When.ToUnixTimeSeconds()),
            DataKitJson.Default.CommitJson);
        return ReadOnlyFile.OfText(n, "/commits/" + n, () => json);
    });
}
