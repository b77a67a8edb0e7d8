using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;
using Microsoft.Win32.SafeHandles;

namespace Kit.DataKit.Store;

/// <summary>
/// A file in a transaction's working tree: a stored blob until first written, then its bytes in memory while small
/// and in a sparse spill file of the transaction's <see cref="WorkArea"/> beyond <see cref="WorkArea.InMemoryMax"/>.
/// Its logical size is charged to the area's budget, so a write at a huge offset costs budget, never memory.
/// </summary>
/// <remarks>Not thread-safe: the transaction's gate serialises every call.</remarks>
public sealed class WorkFile
{
    private const int CopyChunk = 256 * 1024;

    private byte[]? _data;         // in memory (with _length), or
    private SafeFileHandle? _file; // spilled (with _length); neither: the stored blob
    private long _length;
    private WorkArea? _area;       // where _charged was charged
    private long _charged;
    private BlobCursor? _cursor;   // reads of a large unchanged blob

    public WorkFile(EntryKind kind, ObjectId? blob)
    {
        Kind = kind;
        Blob = blob;
    }

    public EntryKind Kind { get; set; }

    /// <summary>The blob holding the content: the stored one while unchanged, or the one last saved; null once edited.</summary>
    public ObjectId? Blob { get; private set; }

    private bool Edited => _data is not null || _file is not null;

    public long Length(GitStore store) => Edited ? _length : (Blob is null ? 0 : store.BlobSize(Blob));

    /// <summary>Reads at <paramref name="offset"/> (EINVAL beyond the end, 0 at it), without loading the file whole.</summary>
    public int ReadAt(WorkArea area, long offset, Span<byte> buffer)
    {
        GitStore store = area.Store;
        if (!Edited)
        {
            if (Blob is null)
            {
                return ReadSpan([], offset, buffer);
            }
            long size = store.BlobSize(Blob);
            if (size <= GitStore.SmallBlob)
            {
                return ReadSpan(store.ReadBlob(Blob), offset, buffer);
            }
            if (_cursor is null)
            {
                _cursor = store.OpenBlob(Blob);
                area.Track(_cursor); // its file or git child goes when the transaction does, if not before
            }
            return _cursor.Read(offset, buffer);
        }
        if (offset < 0 || offset > _length)
        {
            throw new VfsException(Errno.EINVAL, $"Offset {offset} beyond end-of-file (len = {_length})");
        }
        int n = (int)Math.Min(buffer.Length, _length - offset);
        if (_data is not null)
        {
            _data.AsSpan((int)offset, n).CopyTo(buffer);
            return n;
        }
        return RandomAccess.Read(_file!, buffer[..n], offset);
    }

    private static int ReadSpan(ReadOnlySpan<byte> data, long offset, Span<byte> buffer)
    {
        if (offset < 0 || offset > data.Length)
        {
            throw new VfsException(Errno.EINVAL, $"Offset {offset} beyond end-of-file (len = {data.Length})");
        }
        int n = Math.Min(buffer.Length, data.Length - (int)offset);
        data.Slice((int)offset, n).CopyTo(buffer);
        return n;
    }

    /// <summary>The whole content, for what is small by nature (a symlink's target). EFBIG past 1 MiB.</summary>
    public byte[] SmallContent(WorkArea area)
    {
        long length = Length(area.Store);
        if (length > GitStore.SmallBlob)
        {
            throw new VfsException(Errno.EFBIG, "File too large to read whole");
        }
        byte[] all = new byte[length];
        int done = 0;
        while (done < all.Length)
        {
            int n = ReadAt(area, done, all.AsSpan(done));
            if (n == 0)
            {
                throw new VfsException(Errno.EIO, "short read");
            }
            done += n;
        }
        return all;
    }

    /// <summary>Writes at an offset, a gap reading as zeros (§7.1 "Writes"); sparse on disk once spilled.</summary>
    public void Write(WorkArea area, long offset, ReadOnlySpan<byte> bytes)
    {
        long end = offset + bytes.Length;
        area.CheckFileSize(offset, end);
        Materialize(area);
        Grow(area, end);
        if (_data is not null)
        {
            bytes.CopyTo(_data.AsSpan((int)offset));
        }
        else
        {
            RandomAccess.Write(_file!, bytes, offset);
        }
    }

    public void Truncate(WorkArea area, long length)
    {
        area.CheckFileSize(0, length);
        if (length == 0 && !Edited)
        {
            // open(O_TRUNC) of a stored file: no need to copy what is about to go.
            DropBlob();
            _data = [];
        }
        Materialize(area);
        if (length < _length)
        {
            if (_data is not null)
            {
                _data.AsSpan((int)length, (int)(_length - length)).Clear(); // later growth must read zeros
            }
            else
            {
                RandomAccess.SetLength(_file!, length); // frees the blocks past the end
            }
            _length = length;
            Uncharge(_charged - length);
        }
        else
        {
            Grow(area, length);
        }
    }

    /// <summary>Replaces the content with a small byte string (a symlink target, a conflict marker).</summary>
    public void Replace(byte[] content)
    {
        DropEdits();
        DropBlob();
        _data = content;
        _length = content.Length;
    }

    /// <summary>The blob id, writing the content as a blob (streamed from disk when spilled) if it changed.</summary>
    public ObjectId Save(GitStore store)
    {
        if (Blob is not null)
        {
            return Blob;
        }
        if (_file is not null)
        {
            using var content = new SpillStream(_file, _length);
            Blob = store.WriteBlob(content, _length);
        }
        else
        {
            Blob = store.WriteBlob(_data.AsMemory(0, (int)_length));
        }
        // The edited copy stays: a transaction that goes on after a merge or diff edits it, not a fresh copy of the blob.
        return Blob;
    }

    /// <summary>Gives back this file's bytes and spill file: it left the tree (removed or replaced).</summary>
    public void Discard()
    {
        DropEdits();
        DropBlob();
    }

    private void DropBlob()
    {
        _cursor?.Dispose();
        _cursor = null;
        Blob = null;
    }

    private void DropEdits()
    {
        if (_file is not null)
        {
            _area!.Close(_file);
            _file = null;
        }
        _data = null;
        _length = 0;
        Uncharge(_charged);
    }

    private void Uncharge(long bytes)
    {
        if (bytes > 0)
        {
            _area!.Budget.Release(bytes);
            _charged -= bytes;
        }
    }

    /// <summary>Extends the logical size to <paramref name="end"/> if larger, charging the budget and spilling when big.</summary>
    private void Grow(WorkArea area, long end)
    {
        if (end > _charged)
        {
            if (_area is not null && !ReferenceEquals(_area, area))
            {
                throw new InvalidOperationException("a working file belongs to one transaction");
            }
            area.Budget.Charge(end - _charged);
            _area = area;
            _charged = end;
        }
        if (end <= _length)
        {
            return;
        }
        if (_data is not null)
        {
            if (end > WorkArea.InMemoryMax)
            {
                Spill(area);
            }
            else if (end > _data.Length)
            {
                Array.Resize(ref _data, (int)Math.Min(Math.Max(end, _data.Length * 2L), WorkArea.InMemoryMax));
            }
        }
        if (_file is not null)
        {
            RandomAccess.SetLength(_file, end); // a hole, not zeros written
        }
        _length = end;
    }

    private void Spill(WorkArea area)
    {
        SafeFileHandle h = area.CreateSpillFile();
        RandomAccess.Write(h, _data.AsSpan(0, (int)_length), 0);
        _file = h;
        _data = null;
        _area = area;
    }

    /// <summary>First edit: copies the stored blob (streamed, zero runs left as holes) into memory or a spill file.</summary>
    private void Materialize(WorkArea area)
    {
        if (Edited)
        {
            Blob = null; // edited from here: a saved id no longer describes the content
            return;
        }
        ObjectId? blob = Blob;
        DropBlob();
        _data = [];
        _length = 0;
        if (blob is null)
        {
            return;
        }
        GitStore store = area.Store;
        long size = store.BlobSize(blob);
        Grow(area, size);
        if (_data is not null)
        {
            store.ReadBlob(blob).CopyTo(_data, 0);
            return;
        }
        using BlobCursor cursor = store.OpenBlob(blob);
        byte[] chunk = new byte[CopyChunk];
        for (long at = 0; at < size;)
        {
            int n = cursor.Read(at, chunk);
            if (chunk.AsSpan(0, n).IndexOfAnyExcept((byte)0) >= 0)
            {
                RandomAccess.Write(_file!, chunk.AsSpan(0, n), at);
            }
            at += n;
        }
    }

    /// <summary>A spill file read from the start, for the blob writer.</summary>
    private sealed class SpillStream(SafeFileHandle file, long length) : Stream
    {
        private long _position;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => length;
        public override long Position { get => _position; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n = RandomAccess.Read(file, buffer[..(int)Math.Min(buffer.Length, length - _position)], _position);
            _position += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
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

    /// <summary>Gives back the bytes and spill files of every edited file below: the directory left the tree.</summary>
    public void Discard()
    {
        if (_children is null)
        {
            return;
        }
        foreach (object child in _children.Values)
        {
            Discard(child);
        }
    }

    /// <summary><see cref="WorkFile.Discard"/> or <see cref="Discard()"/>, for a node that left the tree.</summary>
    public static void Discard(object? node)
    {
        switch (node)
        {
            case WorkFile f:
                f.Discard();
                break;
            case WorkDir d:
                d.Discard();
                break;
        }
    }

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
