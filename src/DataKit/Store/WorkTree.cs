using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>A file in a transaction's working tree: a stored blob until first written, then bytes in memory.</summary>
public sealed class WorkFile
{
    /// <summary>
    /// Largest file a transaction holds in memory. A 9P write at a huge offset would otherwise make the server
    /// allocate up to 2 GiB for one small message.
    /// </summary>
    public const long MaxSize = 512L * 1024 * 1024;

    private byte[]? _data;
    private int _length;

    public WorkFile(EntryKind kind, ObjectId? blob)
    {
        Kind = kind;
        Blob = blob;
    }

    public EntryKind Kind { get; set; }
    /// <summary>The stored blob while the content is unchanged; null once edited.</summary>
    public ObjectId? Blob { get; private set; }

    public long Length(GitStore store) => _data is null ? (Blob is null ? 0 : store.BlobSize(Blob)) : _length;

    private void Materialize(GitStore store)
    {
        if (_data is null)
        {
            _data = Blob is null ? [] : store.ReadBlob(Blob, cache: false).ToArray();
            _length = _data.Length;
            Blob = null;
        }
    }

    public ReadOnlyMemory<byte> Content(GitStore store) => _data is null
        ? (Blob is null ? ReadOnlyMemory<byte>.Empty : store.ReadBlob(Blob))
        : _data.AsMemory(0, _length);

    /// <summary>Writes at an offset, zero-filling a gap (§7.1 "Writes"): amortised O(1) appends.</summary>
    public void Write(GitStore store, long offset, ReadOnlySpan<byte> bytes)
    {
        Materialize(store);
        long end = offset + bytes.Length;
        // A 9P offset is a u64: one past 2^63 arrives here negative (a fuzzed Twrite found it).
        if (offset < 0 || end > MaxSize)
        {
            throw new VfsException(Errno.EFBIG, "File too large");
        }
        if (end > _data!.Length)
        {
            Array.Resize(ref _data, (int)Math.Max(end, Math.Min((long)_data.Length * 2, MaxSize)));
        }
        if (offset > _length)
        {
            Array.Clear(_data, _length, (int)offset - _length);
        }
        bytes.CopyTo(_data.AsSpan((int)offset));
        _length = (int)Math.Max(_length, end);
    }

    public void Truncate(GitStore store, long length)
    {
        if (length > MaxSize)
        {
            throw new VfsException(Errno.EFBIG, "File too large");
        }
        Materialize(store);
        if (length > _data!.Length)
        {
            Array.Resize(ref _data, (int)length);
        }
        if (length > _length)
        {
            Array.Clear(_data, _length, (int)length - _length);
        }
        _length = (int)length;
    }

    public void Replace(byte[] content)
    {
        _data = content;
        _length = content.Length;
        Blob = null;
    }

    /// <summary>The blob id, writing the content if it changed.</summary>
    public ObjectId Save(GitStore store)
    {
        if (Blob is null)
        {
            Blob = store.WriteBlob(Content(store));
            _data = null;
            _length = 0;
        }
        return Blob;
    }
}

/// <summary>
/// A directory in a transaction's working tree. Until something under it changes it is just a tree id, so committing
/// rewrites only the directories on changed paths: commit cost grows with the depth of the change, not the tree size.
/// Empty directories live only here (Git cannot store them) and vanish on commit, as in the original.
/// </summary>
public sealed class WorkDir
{
    private readonly GitStore _store;
    private ObjectId? _tree;
    private SortedDictionary<string, object>? _children;

    public WorkDir(GitStore store, ObjectId? tree)
    {
        _store = store;
        _tree = tree;
    }

    /// <summary>Children: <see cref="WorkFile"/> or <see cref="WorkDir"/>, sorted by name.</summary>
    public SortedDictionary<string, object> Children
    {
        get
        {
            if (_children is null)
            {
                _children = new SortedDictionary<string, object>(StringComparer.Ordinal);
                if (_tree is not null)
                {
                    foreach (GitEntry e in _store.ReadTree(_tree))
                    {
                        _children[e.Name] = e.Kind == EntryKind.Dir ? new WorkDir(_store, e.Id) : new WorkFile(e.Kind, e.Id);
                    }
                }
            }
            return _children;
        }
    }

    /// <summary>Marks this directory changed: its stored tree id no longer describes it.</summary>
    public void Touch()
    {
        if (_tree is not null)
        {
            _ = Children; // load the entries from the old tree before forgetting it
            _tree = null;
        }
    }

    public ObjectId? StoredTree => _tree;

    /// <summary>Writes changed blobs and trees; returns this directory's tree id (the empty tree when empty).</summary>
    public ObjectId Save()
    {
        if (_tree is not null)
        {
            return _tree;
        }
        var entries = new List<GitEntry>();
        foreach (KeyValuePair<string, object> child in Children)
        {
            switch (child.Value)
            {
                case WorkFile f:
                    entries.Add(new GitEntry(child.Key, f.Kind, f.Save(_store)));
                    break;
                case WorkDir d:
                    ObjectId id = d.Save();
                    if (id != GitStore.EmptyTree)
                    {
                        entries.Add(new GitEntry(child.Key, EntryKind.Dir, id));
                    }
                    break;
            }
        }
        _tree = _store.WriteTree(entries);
        return _tree;
    }
}
