using System.Text;
using Kit.DataKit.Store;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Fs;

/// <summary>
/// One open transaction (reference/datakit.md §2): a working tree snapshot of the branch head, msg, parents,
/// and after a merge the ours/theirs/base trees and the conflict list. Per connection; not persisted.
/// All edits take <see cref="Gate"/>, since the working tree is not thread-safe.
/// </summary>
internal sealed class Transaction : IDisposable
{
    public const string NoMessage = "(no commit message)";

    public Transaction(GitStore store, string branch, string name, string qidKey, DataKitOptions? settings = null, WorkArea? area = null)
    {
        Store = store;
        _settings = settings ?? DataKitOptions.Default;
        Area = area ?? new WorkArea(store, new ByteBudget(_settings.MaxTransactionBytes, null, "transaction"));
        Branch = branch;
        Name = name;
        QidKey = qidKey;
        ObjectId? head = store.GetHead(branch);
        CommitInfo? c = head is null ? null : store.GetCommit(head);
        Root = new WorkDir(store, c?.Tree ?? GitStore.EmptyTree);
        Parents = new TextBuffer(head is null ? "" : head.Sha + "\n");
    }

    private readonly DataKitOptions _settings;

    public GitStore Store { get; }

    /// <summary>Where edited files live (memory or spill files) and the byte budget they draw on.</summary>
    public WorkArea Area { get; }

    /// <summary>The transaction ended (committed, closed, or its connection went): its files and bytes go back.</summary>
    public void Dispose() => Area.Dispose();

    public string Branch { get; }
    public string Name { get; }
    public string QidKey { get; }
    public Lock Gate { get; } = new();
    public WorkDir Root { get; private set; }
    public TextBuffer Msg { get; } = new();
    public TextBuffer Parents { get; }

    /// <summary>"Name &lt;email&gt;" of the author; empty: the server's default (`kit data serve --author`).</summary>
    public TextBuffer Author { get; } = new();

    /// <summary>"Name &lt;email&gt;" of the committer; empty: the server's default (`--committer`, else `--author`).</summary>
    public TextBuffer Committer { get; } = new();

    /// <summary>The author date (RFC 3339 or git's "SECONDS +HHMM"); empty: the time of the commit, as git does.</summary>
    public TextBuffer Date { get; } = new();
    public CommandResult CtlResult { get; } = new();
    public CommandResult MergeResult { get; } = new();
    public SortedDictionary<string, string>? Conflicts { get; private set; }
    public ObjectId? Ours { get; private set; }
    public ObjectId? Theirs { get; private set; }
    public ObjectId? Base { get; private set; }

    // ---------- working tree edits (paths are lists of names under rw/) ----------

    /// <summary>The object at <paramref name="path"/>: a WorkDir, a WorkFile, or null.</summary>
    public object? Get(IReadOnlyList<string> path)
    {
        object current = Root;
        foreach (string step in path)
        {
            if (current is not WorkDir d || !d.Children.TryGetValue(step, out object? next))
            {
                return null;
            }
            current = next;
        }
        return current;
    }

    /// <summary>The directory at <paramref name="path"/>, marking it and its ancestors changed when asked.</summary>
    public WorkDir Dir(IReadOnlyList<string> path, bool touch)
    {
        WorkDir current = Root;
        if (touch)
        {
            current.Touch();
        }
        foreach (string step in path)
        {
            if (!current.Children.TryGetValue(step, out object? next))
            {
                throw DkErrors.NotFound();
            }
            current = next as WorkDir ?? throw DkErrors.NotDir();
            if (touch)
            {
                current.Touch();
            }
        }
        return current;
    }

    public WorkFile File(IReadOnlyList<string> path, bool touch)
    {
        WorkDir parent = Dir(path.Take(path.Count - 1).ToArray(), touch);
        if (!parent.Children.TryGetValue(path[^1], out object? node))
        {
            throw DkErrors.NotFound();
        }
        return node as WorkFile ?? throw DkErrors.IsDir();
    }

    /// <summary>Writing a path resolves its conflict (§2.3); chmod alone does not.</summary>
    public void Resolved(IReadOnlyList<string> path)
    {
        if (Conflicts is null)
        {
            return;
        }
        // Writing a directory resolves the conflicts beneath it too (the original's filter was inverted, quirk #13).
        string p = string.Join('/', path);
        Conflicts.Remove(p);
        foreach (string key in Conflicts.Keys.Where(k => k.StartsWith(p + "/", StringComparison.Ordinal)).ToArray())
        {
            Conflicts.Remove(key);
        }
    }

    // ---------- commit (§2.2) ----------

    private List<ObjectId> ParseParents()
    {
        var parents = new List<ObjectId>();
        foreach (string raw in Parents.Text.Split('\n'))
        {
            string line = raw.Trim();
            if (line.Length == 0)
            {
                continue;
            }
            if (!GitStore.TryParseHash(line, out ObjectId? id, out string error))
            {
                throw DkErrors.Invalid(error);
            }
            if (Store.GetCommit(id!) is null)
            {
                throw DkErrors.NotFound();
            }
            parents.Add(id!);
        }
        return parents;
    }

    private void CheckNoConflicts()
    {
        if (Conflicts is { Count: > 0 })
        {
            throw new VfsException(Errno.EAGAIN, "conflicts file is not empty");
        }
    }

    /// <summary>Commits and merges into the branch; returns the new head.</summary>
    /// <summary>Set once committed: a second "commit" on a still-open fid must not make another commit.</summary>
    public bool Closed { get; private set; }

    public ObjectId Commit()
    {
        lock (Gate)
        {
            if (Closed)
            {
                throw DkErrors.NotFound();
            }
            CheckNoConflicts();
            List<ObjectId> parents = ParseParents();
            (Signature author, Signature committer) = Signatures();
            string message = Msg.Text.Length == 0 ? NoMessage : Msg.Text;
            ObjectId tree = Root.Save();
            ObjectId commit = Store.WriteCommit(tree, parents, message, author, committer);
            for (int attempt = 0; attempt < 20; attempt++)
            {
                ObjectId? head = Store.GetHead(Branch);
                ObjectId target;
                if (head is null || Store.IsAncestor(head, commit))
                {
                    target = commit;
                }
                else
                {
                    // The branch moved meanwhile: a 3-way merge, as Irmin's Head.merge did. The merge commit reuses the message.
                    ObjectId? mergeBase = Store.MergeBase(head, commit);
                    ObjectId? baseTree = mergeBase is null ? null : Store.GetCommit(mergeBase)!.Tree;
                    var conflicts = new SortedDictionary<string, string>(StringComparer.Ordinal);
                    WorkDir merged = TreeMerge.Merge(Store, baseTree, Store.GetCommit(head)!.Tree, tree, conflicts);
                    if (conflicts.Count > 0)
                    {
                        KeyValuePair<string, string> first = conflicts.First();
                        throw new VfsException(Errno.EAGAIN, $"Merge conflict: {first.Key}: {first.Value}");
                    }
                    target = Store.WriteCommit(merged.Save(), [head, commit], message, author, committer);
                }
                if (Store.TrySetHead(Branch, target, head, $"datakit: commit {Name}"))
                {
                    Closed = true;
                    return target;
                }
            }
            throw new VfsException(Errno.EAGAIN, "Merge conflict: branch kept moving");
        }
    }

    /// <summary>
    /// The author and committer of this commit: the transaction's <c>author</c>, <c>committer</c> and <c>date</c> files
    /// where set, else the server's defaults and now. Checked before anything is written, so a bad value leaves the
    /// transaction open to be fixed (as bad <c>parents</c> do): EINVAL with the file's name and what was expected.
    /// </summary>
    private (Signature Author, Signature Committer) Signatures()
    {
        DateTimeOffset now = DateTimeOffset.Now;
        Identity defaultAuthor = _settings.Author ?? Store.Author;
        Identity committer = ParseIdentity("committer", Committer) ?? _settings.Committer ?? defaultAuthor;
        Identity author = ParseIdentity("author", Author) ?? defaultAuthor;
        DateTimeOffset when = now;
        string date = Date.Text;
        if (date.Trim().Length > 0 && !CommitMetadata.TryParseDate(date, out when, out string error))
        {
            throw DkErrors.Invalid($"date: {error} (got {Quote(date)})");
        }
        return (new Signature(author, when), new Signature(committer, now));
    }

    private static Identity? ParseIdentity(string file, TextBuffer buffer)
    {
        string text = buffer.Text;
        if (text.Trim().Length == 0)
        {
            return null;
        }
        return CommitMetadata.TryParseIdentity(text, out Identity? identity, out string error)
            ? identity
            : throw DkErrors.Invalid($"{file}: {error} (got {Quote(text)})");
    }

    /// <summary>The offending value, cut short: it came from a client and may be long.</summary>
    private static string Quote(string text)
    {
        string t = text.Trim();
        return "\"" + (t.Length > 80 ? t[..80] + "..." : t) + "\"";
    }

    // ---------- merge mode (§2.3) ----------

    public void Merge(string hash)
    {
        lock (Gate)
        {
            if (!GitStore.TryParseHash(hash, out ObjectId? theirs, out string error))
            {
                throw DkErrors.Invalid(error);
            }
            CommitInfo theirCommit = Store.GetCommit(theirs!) ?? throw DkErrors.NotFound();
            CheckNoConflicts();
            List<ObjectId> parents = ParseParents();
            ObjectId oursTree = Root.Save();
            ObjectId? baseTree = null;
            if (parents.Count > 0)
            {
                // A throwaway commit of rw with the current parents stands for "ours" in the ancestor search.
                ObjectId ours = Store.WriteCommit(oursTree, parents, "merge base probe");
                ObjectId? lca = Store.MergeBase(ours, theirs!);
                baseTree = lca is null ? null : Store.GetCommit(lca)!.Tree;
            }
            Parents.Set(Parents.Text + (Parents.Text.Length == 0 || Parents.Text.EndsWith('\n') ? "" : "\n") + theirs!.Sha + "\n");
            Conflicts ??= new SortedDictionary<string, string>(StringComparer.Ordinal);
            Root = TreeMerge.Merge(Store, baseTree, oursTree, theirCommit.Tree, Conflicts);
            Ours = oursTree;
            Theirs = theirCommit.Tree;
            Base = baseTree ?? GitStore.EmptyTree;
        }
    }

    public string Diff(string hash)
    {
        if (!GitStore.TryParseHash(hash, out ObjectId? id, out string error))
        {
            throw DkErrors.Invalid(error);
        }
        CommitInfo c = Store.GetCommit(id!) ?? throw DkErrors.NotFound();
        ObjectId tree;
        lock (Gate)
        {
            tree = Root.Save();
        }
        var sb = new StringBuilder();
        foreach (string line in TreeDiff.Diff(Store, c.Tree, tree))
        {
            sb.Append(line).Append('\n');
        }
        return sb.ToString();
    }
}

/// <summary>A directory under a transaction's rw/.</summary>
internal sealed class RwDir(Transaction tx, string[] path) : IDirectory
{
    public string Name => path.Length == 0 ? "rw" : path[^1];
    public ulong Path { get; } = QidPaths.Of("rw", tx.QidKey + "/" + string.Join('/', path));
    public NodeKind Kind => NodeKind.Directory;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo(0));

    private INode Node(string name, object value) => value switch
    {
        WorkDir => new RwDir(tx, [.. path, name]),
        WorkFile f => new RwFile(tx, [.. path, name], f.Kind == EntryKind.Link),
        _ => throw DkErrors.NotFound(),
    };

    public ValueTask<INode?> LookupAsync(string name, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            return ValueTask.FromResult(tx.Get([.. path, name]) is object o ? Node(name, o) : null);
        }
    }

    public ValueTask<IReadOnlyList<INode>> ListAsync(CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkDir d = tx.Dir(path, touch: false);
            var nodes = new List<INode>();
            foreach (KeyValuePair<string, object> child in d.Children)
            {
                nodes.Add(Node(child.Key, child.Value));
            }
            return ValueTask.FromResult<IReadOnlyList<INode>>(nodes);
        }
    }

    private INode Put(string name, WorkFile file)
    {
        lock (tx.Gate)
        {
            WorkDir d = tx.Dir(path, touch: true);
            if (d.Children.TryGetValue(name, out object? existing) && existing is WorkDir)
            {
                throw DkErrors.IsDir();
            }
            // Creating over an existing file replaces it (the original's create-or-truncate, which shell tools rely on).
            WorkDir.Discard(existing);
            d.Children[name] = file;
            tx.Resolved([.. path, name]);
            return new RwFile(tx, [.. path, name], file.Kind == EntryKind.Link);
        }
    }

    public ValueTask<INode> CreateFileAsync(string name, bool executable, CancellationToken ct) =>
        ValueTask.FromResult(Put(name, new WorkFile(executable ? EntryKind.Exec : EntryKind.File, null)));

    public ValueTask<INode> CreateSymlinkAsync(string name, string target, CancellationToken ct)
    {
        var f = new WorkFile(EntryKind.Link, null);
        f.Replace(Encoding.UTF8.GetBytes(target));
        return ValueTask.FromResult(Put(name, f));
    }

    public ValueTask<INode> CreateDirectoryAsync(string name, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkDir d = tx.Dir(path, touch: true);
            if (d.Children.ContainsKey(name))
            {
                throw DkErrors.Exists();
            }
            d.Children[name] = new WorkDir(tx.Store, null);
            tx.Resolved([.. path, name]);
            return ValueTask.FromResult<INode>(new RwDir(tx, [.. path, name]));
        }
    }

    public ValueTask RemoveAsync(string name, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkDir d = tx.Dir(path, touch: true);
            // Whole subtrees go, empty or not (the original's rm semantics; and empty dirs really leave, fixing #147).
            if (!d.Children.Remove(name, out object? gone))
            {
                throw DkErrors.NotFound();
            }
            WorkDir.Discard(gone);
            tx.Resolved([.. path, name]);
            return ValueTask.CompletedTask;
        }
    }

    public ValueTask RenameAsync(string oldName, string newName, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkDir d = tx.Dir(path, touch: true);
            if (!d.Children.TryGetValue(oldName, out object? node))
            {
                throw DkErrors.NotFound();
            }
            if (d.Children.TryGetValue(newName, out object? target) && target is WorkDir td && td.Children.Count > 0)
            {
                throw DkErrors.IsDir();
            }
            d.Children.Remove(oldName);
            if (!ReferenceEquals(target, node))
            {
                WorkDir.Discard(target);
            }
            d.Children[newName] = node;
            tx.Resolved([.. path, oldName]);
            tx.Resolved([.. path, newName]);
            return ValueTask.CompletedTask;
        }
    }
}

/// <summary>A file or symlink under a transaction's rw/.</summary>
internal sealed class RwFile(Transaction tx, string[] path, bool symlink) : IFile
{
    public string Name => path[^1];
    public ulong Path { get; } = QidPaths.Of("rw", tx.QidKey + "/" + string.Join('/', path));
    public NodeKind Kind => symlink ? NodeKind.Symlink : NodeKind.File;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkFile f = tx.File(path, touch: false);
            return ValueTask.FromResult(new NodeInfo((ulong)f.Length(tx.Store), f.Kind == EntryKind.Exec));
        }
    }

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            tx.File(path, touch: false);
        }
        return ValueTask.FromResult<IOpenFile>(new Open(tx, path));
    }

    public ValueTask TruncateAsync(ulong length, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            tx.File(path, touch: true).Truncate(tx.Area, length > long.MaxValue ? -1 : (long)length);
            tx.Resolved(path);
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkFile f = tx.File(path, touch: true);
            f.Kind = executable ? EntryKind.Exec : EntryKind.File;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask MakeSymlinkAsync(string target, CancellationToken ct)
    {
        lock (tx.Gate)
        {
            WorkFile f = tx.File(path, touch: true);
            f.Kind = EntryKind.Link;
            f.Replace(Encoding.UTF8.GetBytes(target));
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask<string> ReadLinkAsync(CancellationToken ct)
    {
        lock (tx.Gate)
        {
            return ValueTask.FromResult(Encoding.UTF8.GetString(tx.File(path, touch: false).SmallContent(tx.Area)));
        }
    }

    private sealed class Open(Transaction tx, string[] path) : IOpenFile
    {
        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            lock (tx.Gate)
            {
                return ValueTask.FromResult(tx.File(path, touch: false).ReadAt(tx.Area, offset > long.MaxValue ? -1 : (long)offset, buffer.Span));
            }
        }

        public ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            lock (tx.Gate)
            {
                tx.File(path, touch: true).Write(tx.Area, offset > long.MaxValue ? -1 : (long)offset, data.Span);
                tx.Resolved(path);
            }
            return ValueTask.FromResult(data.Length);
        }
    }
}
