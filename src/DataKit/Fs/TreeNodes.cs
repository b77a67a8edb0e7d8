using System.Text;
using Kit.DataKit.Store;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Fs;

/// <summary>
/// A read-only view of a Git tree at a path. <c>root</c> is re-evaluated on every operation, so under
/// <c>branch/B/ro</c> each listing and open sees the branch's current head (the original's live view).
/// </summary>
internal sealed class GitTreeDir : IDirectory
{
    private readonly GitStore _store;
    private readonly Func<ObjectId?> _root;
    private readonly string[] _path;
    private readonly string _qidKey;

    public GitTreeDir(GitStore store, string name, string qidKey, Func<ObjectId?> root, string[] path)
    {
        _store = store;
        Name = name;
        _qidKey = qidKey;
        Path = QidPaths.Of("tree", qidKey);
        _root = root;
        _path = path;
    }

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.Directory;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo(0));

    /// <summary>This directory's tree under the current root, and that root (null when the path is gone).</summary>
    private (ObjectId? Root, ObjectId? Tree) Tree()
    {
        ObjectId? root = _root();
        if (root is null)
        {
            return (null, _path.Length == 0 ? GitStore.EmptyTree : null);
        }
        return (root, ResolvedPath.Of(ref _resolved, _store, root, _path) is { Kind: EntryKind.Dir } d ? d.Id : null);
    }

    // The last root this node resolved its path under, and the result: roots change only on commits, so a walk,
    // getattr and open of the same node resolve the path once.
    private ResolvedPath? _resolved;

    internal INode Child(GitEntry e, ObjectId? root)
    {
        string key = $"{_qidKey}/{e.Name}";
        string[] path = [.. _path, e.Name];
        ResolvedPath? seed = root is null ? null : new ResolvedPath(root, e);
        if (e.Kind == EntryKind.Dir)
        {
            return new GitTreeDir(_store, e.Name, key, _root, path) { _resolved = seed };
        }
        return new GitBlobFile(_store, e.Name, key, e.Kind, _root, path, seed);
    }

    public ValueTask<INode?> LookupAsync(string name, CancellationToken ct)
    {
        (ObjectId? root, ObjectId? tree) = Tree();
        if (tree is null)
        {
            return ValueTask.FromResult<INode?>(null);
        }
        return ValueTask.FromResult(_store.ReadTree(tree).Find(name) is GitEntry e ? Child(e, root) : null);
    }

    public ValueTask<IReadOnlyList<INode>> ListAsync(CancellationToken ct)
    {
        (ObjectId? root, ObjectId? tree) = Tree();
        if (tree is null)
        {
            throw DkErrors.NotFound();
        }
        GitTreeListing listing = _store.ReadTree(tree);
        var nodes = new List<INode>(listing.Count);
        foreach (GitEntry e in listing)
        {
            nodes.Add(Child(e, root));
        }
        return ValueTask.FromResult<IReadOnlyList<INode>>(nodes);
    }
}

/// <summary>What a path resolved to under one root tree (null: absent). Replaced whole, so reads need no lock.</summary>
internal sealed record ResolvedPath(ObjectId Root, GitEntry? Entry)
{
    public static GitEntry? Of(ref ResolvedPath? memo, GitStore store, ObjectId root, string[] path)
    {
        ResolvedPath? last = Volatile.Read(ref memo);
        if (last is not null && last.Root == root)
        {
            return last.Entry;
        }
        GitEntry? e = store.Resolve(root, path);
        Volatile.Write(ref memo, new ResolvedPath(root, e));
        return e;
    }
}

/// <summary>A read-only file or symlink backed by a blob found through <c>resolve</c> (F/X/L entries).</summary>
internal sealed class GitBlobFile : IFile
{
    private readonly GitStore _store;
    private readonly Func<ObjectId?> _root;
    private readonly string[] _path;
    private ResolvedPath? _resolved;

    public GitBlobFile(GitStore store, string name, string qidKey, EntryKind kind, Func<ObjectId?> root, string[] path, ResolvedPath? seed)
    {
        _store = store;
        Name = name;
        Path = QidPaths.Of("blob", qidKey);
        Kind = kind == EntryKind.Link ? NodeKind.Symlink : NodeKind.File;
        _root = root;
        _path = path;
        _resolved = seed;
    }

    private GitEntry? Resolve() => _root() is ObjectId r ? ResolvedPath.Of(ref _resolved, _store, r, _path) : null;

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind { get; }

    private GitEntry Entry() => Resolve() is { Kind: not EntryKind.Dir } e ? e : throw DkErrors.NotFound();

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct)
    {
        GitEntry e = Entry();
        return ValueTask.FromResult(new NodeInfo((ulong)_store.BlobSize(e.Id), e.Kind == EntryKind.Exec));
    }

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct)
    {
        if (write)
        {
            throw DkErrors.ReadOnlyFile();
        }
        ObjectId blob = Entry().Id;
        // Small blobs are read whole and shared through the store's cache; a large one gets its own streaming cursor,
        // so memory per open file is bounded whatever the blob's size.
        return ValueTask.FromResult<IOpenFile>(_store.BlobSize(blob) <= GitStore.SmallBlob
            ? new Open(_store.ReadBlob(blob))
            : new StreamingOpen(_store.OpenBlob(blob)));
    }

    public ValueTask<string> ReadLinkAsync(CancellationToken ct) => ValueTask.FromResult(Encoding.UTF8.GetString(_store.ReadBlob(Entry().Id)));

    public ValueTask TruncateAsync(ulong length, CancellationToken ct) => throw DkErrors.ReadOnlyFile();

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct) => throw DkErrors.ReadOnlyFile();

    private sealed class Open(byte[] data) : IOpenFile
    {
        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct) =>
            ValueTask.FromResult(DkErrors.ReadAt(data, offset, buffer.Span));
    }

    /// <summary>A large blob's open file: reads go through one cursor, one at a time (9P may send them concurrently).</summary>
    private sealed class StreamingOpen(BlobCursor cursor) : IOpenFile
    {
        private readonly Lock _gate = new();

        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            lock (_gate)
            {
                return ValueTask.FromResult(cursor.Read(offset > long.MaxValue ? -1 : (long)offset, buffer.Span));
            }
        }

        public void Close()
        {
            lock (_gate)
            {
                cursor.Dispose();
            }
        }
    }
}
