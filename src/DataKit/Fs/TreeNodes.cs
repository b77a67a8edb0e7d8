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

    private ObjectId? Tree()
    {
        ObjectId? root = _root();
        if (root is null)
        {
            return _path.Length == 0 ? GitStore.EmptyTree : null;
        }
        GitEntry? e = _store.Resolve(root, _path);
        return e is { Kind: EntryKind.Dir } d ? d.Id : null;
    }

    internal INode Child(GitEntry e)
    {
        string key = $"{_qidKey}/{e.Name}";
        string[] path = [.. _path, e.Name];
        if (e.Kind == EntryKind.Dir)
        {
            return new GitTreeDir(_store, e.Name, key, _root, path);
        }
        Func<ObjectId?> root = _root;
        GitStore store = _store;
        return new GitBlobFile(_store, e.Name, key, e.Kind, () =>
        {
            ObjectId? r = root();
            return r is null ? null : store.Resolve(r, path);
        });
    }

    public ValueTask<INode?> LookupAsync(string name, CancellationToken ct)
    {
        ObjectId? tree = Tree();
        if (tree is null)
        {
            return ValueTask.FromResult<INode?>(null);
        }
        foreach (GitEntry e in _store.ReadTree(tree))
        {
            if (e.Name == name)
            {
                return ValueTask.FromResult<INode?>(Child(e));
            }
        }
        return ValueTask.FromResult<INode?>(null);
    }

    public ValueTask<IReadOnlyList<INode>> ListAsync(CancellationToken ct)
    {
        ObjectId? tree = Tree() ?? throw DkErrors.NotFound();
        var nodes = new List<INode>();
        foreach (GitEntry e in _store.ReadTree(tree))
        {
            nodes.Add(Child(e));
        }
        return ValueTask.FromResult<IReadOnlyList<INode>>(nodes);
    }
}

/// <summary>A read-only file or symlink backed by a blob found through <c>resolve</c> (F/X/L entries).</summary>
internal sealed class GitBlobFile : IFile
{
    private readonly GitStore _store;
    private readonly Func<GitEntry?> _resolve;

    public GitBlobFile(GitStore store, string name, string qidKey, EntryKind kind, Func<GitEntry?> resolve)
    {
        _store = store;
        Name = name;
        Path = QidPaths.Of("blob", qidKey);
        Kind = kind == EntryKind.Link ? NodeKind.Symlink : NodeKind.File;
        _resolve = resolve;
    }

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind { get; }

    private GitEntry Entry() => _resolve() is { Kind: not EntryKind.Dir } e ? e : throw DkErrors.NotFound();

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
        return ValueTask.FromResult<IOpenFile>(new Open(_store.ReadBlob(Entry().Id)));
    }

    public ValueTask<string> ReadLinkAsync(CancellationToken ct) => ValueTask.FromResult(Encoding.UTF8.GetString(_store.ReadBlob(Entry().Id)));

    public ValueTask TruncateAsync(ulong length, CancellationToken ct) => throw DkErrors.ReadOnlyFile();

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct) => throw DkErrors.ReadOnlyFile();

    private sealed class Open(byte[] data) : IOpenFile
    {
        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct) =>
            ValueTask.FromResult(DkErrors.ReadAt(data, offset, buffer.Span));
    }
}
