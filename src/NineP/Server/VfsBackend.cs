using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.NineP.Server;

/// <summary>
/// Any <see cref="IFileSystemSession"/> (the DataKit tree, test trees) as a 9P backend. A fid is a node plus the
/// chain of directories walked through (".." and remove/rename need the parent; nodes know no parents). Names are
/// text (git entry names). Directories read as a snapshot taken at offset 0.
/// </summary>
public sealed class VfsBackend(IFileSystemSession session) : INinePBackend<VfsBackend.FidState>
{
    public bool LinuxOnly => false;

    public bool TextNames => true;

    /// <summary>The chain of directories walked through, so ".." and remove/rename know the parent.</summary>
    public sealed record Ancestry(IDirectory Directory, Ancestry? Parent);

    /// <summary>What one fid points at and, once opened, its open file or directory cursor.</summary>
    public sealed class FidState(INode node, Ancestry? parents)
    {
        private int _closed;

        public INode Node { get; set; } = node;
        public Ancestry? Parents { get; } = parents;
        public bool IsOpen { get; private set; }
        public bool Writable { get; private set; }
        internal IOpenFile? File { get; private set; }
        internal DirectoryCursor? Directory { get; private set; }

        internal void OpenDirectory()
        {
            Directory = new DirectoryCursor();
            IsOpen = true;
        }

        internal void OpenFile(IOpenFile file, bool writable)
        {
            File = file;
            Writable = writable;
            IsOpen = true;
        }

        internal void MarkOpen() => IsOpen = true;

        public void Close()
        {
            if (Interlocked.Exchange(ref _closed, 1) == 0)
            {
                File?.Close();
            }
        }
    }

    public async ValueTask<(FidState Root, Qid Qid)> AttachAsync(string uname, string aname, CancellationToken ct)
    {
        IDirectory root = await session.AttachAsync(uname, aname, ct).ConfigureAwait(false);
        return (new FidState(root, null), QidOf(root));
    }

    public FidState Clone(FidState fid) => new(fid.Node, fid.Parents);

    public bool IsDirectory(FidState fid) => fid.Node is IDirectory;

    public async ValueTask<(FidState? Next, Qid Qid)> WalkAsync(FidState from, string name, CancellationToken ct)
    {
        var dir = (IDirectory)from.Node;
        if (name == "..")
        {
            // walk(5): ".." of the root is the root.
            FidState up = from.Parents is { } p ? new FidState(p.Directory, p.Parent) : from;
            return (up, QidOf(up.Node));
        }
        INode? child = await dir.LookupAsync(name, ct).ConfigureAwait(false);
        return child is null ? (null, default) : (new FidState(child, new Ancestry(dir, from.Parents)), QidOf(child));
    }

    public void Clunk(FidState fid) => fid.Close();

    public bool IsOpen(FidState fid) => fid.IsOpen;

    private static bool Writes(uint flags) => (flags & 3) is P9.LOWronly or P9.LORdwr;

    public async ValueTask<Qid> OpenAsync(FidState f, uint flags, CancellationToken ct)
    {
        if (f.Node is IDirectory)
        {
            if (Writes(flags))
            {
                throw VfsErrors.IsDirectory();
            }
            f.OpenDirectory();
        }
        else if (f.Node is IFile file)
        {
            if ((flags & P9.LOTrunc) != 0 && Writes(flags))
            {
                await file.TruncateAsync(0, ct).ConfigureAwait(false);
            }
            f.OpenFile(await file.OpenAsync(Writes(flags), ct).ConfigureAwait(false), Writes(flags));
        }
        return QidOf(f.Node);
    }

    public async ValueTask<(FidState Fid, Qid Qid)> CreateAsync(FidState f, string name, uint flags, uint mode, string symlinkTarget, CancellationToken ct)
    {
        IDirectory dir = DirectoryOf(f);
        INode node;
        switch (mode & 0xF000)
        {
            case P9.SIfDir:
                node = await dir.CreateDirectoryAsync(name, ct).ConfigureAwait(false);
                break;
            case P9.SIfLnk:
                node = await dir.CreateSymlinkAsync(name, symlinkTarget, ct).ConfigureAwait(false);
                break;
            default:
                if ((flags & P9.LOExcl) != 0 && await dir.LookupAsync(name, ct).ConfigureAwait(false) is not null)
                {
                    throw new VfsException(Errno.EEXIST, "File exists");
                }
                node = await dir.CreateFileAsync(name, (mode & 0x40) != 0, ct).ConfigureAwait(false);
                break;
        }
        // tcreate: the fid now stands for the new, opened node, walked from the directory it stood for.
        var child = new FidState(node, new Ancestry(dir, f.Parents));
        if (node is IDirectory)
        {
            child.OpenDirectory();
        }
        else if (node is IFile file && node.Kind == NodeKind.File)
        {
            child.OpenFile(await file.OpenAsync(Writes(flags), ct).ConfigureAwait(false), Writes(flags));
        }
        else
        {
            child.MarkOpen();
        }
        return (child, QidOf(node));
    }

    public async ValueTask<int> ReadAsync(FidState f, ulong offset, Memory<byte> into, Dialect dialect, CancellationToken ct)
    {
        if (f.Node is IDirectory dir)
        {
            return await f.Directory!.ReadStatsAsync(dir, offset, into, dialect, ct).ConfigureAwait(false);
        }
        IOpenFile open = f.File ?? throw new VfsException(Errno.EBADF, "Can't read from this fid");
        return await open.ReadAsync(offset, into, ct).ConfigureAwait(false);
    }

    public async ValueTask<int> WriteAsync(FidState f, ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (f.Node is IDirectory)
        {
            throw new VfsException(Errno.EISDIR, "Can't write to directories");
        }
        if (f.File is null || !f.Writable)
        {
            throw new VfsException(Errno.EBADF, "File not open for writing");
        }
        return await f.File.WriteAsync(offset, data, ct).ConfigureAwait(false);
    }

    public async ValueTask<int> ReadDirAsync(FidState f, ulong offset, Memory<byte> into, CancellationToken ct)
    {
        if (f.Directory is null || f.Node is not IDirectory dir)
        {
            throw new VfsException(Errno.EBADF, "Can't readdir this fid");
        }
        return await f.Directory.ReadEntriesAsync(dir, offset, into, ct).ConfigureAwait(false);
    }

    public async ValueTask<LAttr> GetAttrAsync(FidState f, CancellationToken ct)
    {
        INode node = f.Node;
        NodeInfo info = await node.GetInfoAsync(ct).ConfigureAwait(false);
        uint mode = node.Kind switch
        {
            NodeKind.Directory => P9.SIfDir | 0x1FD,
            NodeKind.Symlink => P9.SIfLnk | 0x1FF,
            _ => P9.SIfReg | (info.Executable ? 0x1FDu : 0x1B4u),
        };
        ulong size = node.Kind == NodeKind.Directory ? 0 : info.Length;
        return new LAttr
        {
            Valid = P9.GetattrBasic, Qid = QidOf(node), Mode = mode, NLink = node.Kind == NodeKind.Directory ? 2UL : 1UL,
            Size = size, BlkSize = 4096, Blocks = (size + 511) / 512,
        };
    }

    public async ValueTask SetAttrAsync(FidState f, LSetAttr a, CancellationToken ct)
    {
        if ((a.Valid & P9.AttrSize) != 0)
        {
            IFile file = f.Node as IFile ?? throw new VfsException(Errno.EISDIR, "Can't set length of a directory");
            await file.TruncateAsync(a.Size, ct).ConfigureAwait(false);
        }
        if ((a.Valid & P9.AttrMode) != 0 && f.Node is IFile chFile && f.Node.Kind == NodeKind.File)
        {
            await chFile.SetExecutableAsync((a.Mode & 0x40) != 0, ct).ConfigureAwait(false);
        }
    }

    public async ValueTask<Qid> MkdirAsync(FidState dir, string name, uint mode, CancellationToken ct) =>
        QidOf(await DirectoryOf(dir).CreateDirectoryAsync(name, ct).ConfigureAwait(false));

    public async ValueTask<Qid> SymlinkAsync(FidState dir, string name, string target, CancellationToken ct) =>
        QidOf(await DirectoryOf(dir).CreateSymlinkAsync(name, target, ct).ConfigureAwait(false));

    public async ValueTask<string> ReadLinkAsync(FidState f, CancellationToken ct)
    {
        if (f.Node is not IFile file || f.Node.Kind != NodeKind.Symlink)
        {
            throw new VfsException(Errno.EINVAL, "Not a symlink");
        }
        return await file.ReadLinkAsync(ct).ConfigureAwait(false);
    }

    public async ValueTask RenameAsync(FidState f, FidState dir, string newName, CancellationToken ct)
    {
        Ancestry parent = f.Parents ?? throw new VfsException(Errno.EPERM, "Can't rename /");
        if (dir.Node.Path != parent.Directory.Path)
        {
            throw new VfsException(Errno.EXDEV, "Cross-directory rename is not supported");
        }
        await parent.Directory.RenameAsync(f.Node.Name, newName, ct).ConfigureAwait(false);
        if (await parent.Directory.LookupAsync(newName, ct).ConfigureAwait(false) is { } renamed)
        {
            f.Node = renamed;
        }
    }

    public async ValueTask RenameAtAsync(FidState oldDir, string oldName, FidState newDir, string newName, CancellationToken ct)
    {
        if (oldDir.Node.Path != newDir.Node.Path)
        {
            throw new VfsException(Errno.EXDEV, "Cross-directory rename is not supported");
        }
        await DirectoryOf(oldDir).RenameAsync(oldName, newName, ct).ConfigureAwait(false);
    }

    public ValueTask UnlinkAtAsync(FidState dir, string name, uint flags, CancellationToken ct) =>
        DirectoryOf(dir).RemoveAsync(name, ct);

    public async ValueTask RemoveAsync(FidState f, CancellationToken ct)
    {
        f.Close();
        Ancestry parent = f.Parents ?? throw new VfsException(Errno.EPERM, "Can't remove the root");
        await parent.Directory.RemoveAsync(f.Node.Name, ct).ConfigureAwait(false);
    }

    public ValueTask<LStatFs> StatFsAsync(FidState fid, CancellationToken ct) => ValueTask.FromResult(new LStatFs
    {
        Type = 0x01021997, BSize = 4096, Blocks = 1 << 20, BFree = 1 << 19, BAvail = 1 << 19, Files = 1 << 20, FFree = 1 << 19,
        NameLen = NameRules.MaxNameBytes,
    });

    public ValueTask FsyncAsync(FidState fid, bool dataOnly, CancellationToken ct) => ValueTask.CompletedTask;

    public async ValueTask<Stat> StatAsync(FidState f, Dialect dialect, CancellationToken ct) => await BuildStatAsync(f.Node, dialect, ct).ConfigureAwait(false);

    public async ValueTask WstatAsync(FidState f, Stat s, Dialect dialect, CancellationToken ct)
    {
        if (s.Name.Length > 0 && s.Name != f.Node.Name)
        {
            FidState parent = f.Parents is null ? f : new FidState(f.Parents.Directory, f.Parents.Parent);
            await RenameAsync(f, parent, s.Name, ct).ConfigureAwait(false);
        }
        if (s.Length != ulong.MaxValue)
        {
            if (f.Node is IFile file)
            {
                await file.TruncateAsync(s.Length, ct).ConfigureAwait(false);
            }
            else if (s.Length != 0)
            {
                throw new VfsException(Errno.EISDIR, "Can't set length of a directory");
            }
        }
        if (s.Mode != uint.MaxValue && f.Node is IFile chFile)
        {
            if ((s.Mode & P9.DmSymlink) != 0)
            {
                if (s.Extension.Length == 0)
                {
                    throw new VfsException(Errno.EINVAL, "Missing target for symlink!");
                }
                await chFile.MakeSymlinkAsync(s.Extension, ct).ConfigureAwait(false);
            }
            else
            {
                await chFile.SetExecutableAsync((s.Mode & 0x40) != 0, ct).ConfigureAwait(false);
            }
        }
        // chmod on a directory, mtime/atime/gid changes: accepted and ignored (Linux sends mtime on touch).
    }

    public ValueTask DisposeAsync() => session.DisposeAsync();

    private static IDirectory DirectoryOf(FidState f) =>
        f.Node as IDirectory ?? throw new VfsException(Errno.ENOTDIR, $"\"{f.Node.Name}\" is not a directory");

    internal static Qid QidOf(INode node) => new(
        node.Kind switch { NodeKind.Directory => P9.QtDir, NodeKind.Symlink => P9.QtSymlink, _ => P9.QtFile },
        0,
        node.Path);

    internal static async ValueTask<Stat> BuildStatAsync(INode node, Dialect dialect, CancellationToken ct)
    {
        NodeInfo info = await node.GetInfoAsync(ct).ConfigureAwait(false);
        uint mode;
        string extension = "";
        switch (node.Kind)
        {
            case NodeKind.Directory:
                mode = P9.DmDir | 0x1FD; // rwxrwxr-x
                break;
            case NodeKind.Symlink:
                mode = P9.DmSymlink | 0x1FD;
                if (dialect != Dialect.Legacy && node is IFile link)
                {
                    extension = await link.ReadLinkAsync(ct).ConfigureAwait(false);
                }
                break;
            default:
                mode = info.Executable ? 0x1FDu : 0x1B4u; // rwxrwxr-x or rw-rw-r--
                break;
        }
        return new Stat
        {
            Qid = QidOf(node), Mode = mode, Length = node.Kind == NodeKind.Directory ? 0 : info.Length, Name = node.Name,
            Uid = "root", Gid = "root", Muid = "none", Extension = extension,
        };
    }

    /// <summary>
    /// A snapshot of a directory's entries taken at offset 0, read out as stat records (9P2000/.u) or dirents (.L).
    /// Offset 0 always restarts (fixing the original, which could not rewind).
    /// </summary>
    internal sealed class DirectoryCursor
    {
        private IReadOnlyList<INode> _entries = [];
        private int _index;
        private ulong _offset;

        public async ValueTask<int> ReadStatsAsync(IDirectory dir, ulong offset, Memory<byte> buffer, Dialect dialect, CancellationToken ct)
        {
            if (offset == 0)
            {
                _entries = await dir.ListAsync(ct).ConfigureAwait(false);
                _index = 0;
                _offset = 0;
            }
            else if (offset != _offset)
            {
                throw new VfsException(Errno.ESPIPE, "Can't seek in a directory");
            }
            int written = 0;
            while (_index < _entries.Count)
            {
                Stat stat = await BuildStatAsync(_entries[_index], dialect, ct).ConfigureAwait(false);
                int size = StatCodec.SizeOf(stat, dialect);
                if (written + size > buffer.Length)
                {
                    break;
                }
                var w = new WireWriter(buffer.Span[written..]);
                StatCodec.Write(ref w, stat, dialect);
                written += w.Position;
                _index++;
            }
            _offset += (ulong)written;
            return written;
        }

        public async ValueTask<int> ReadEntriesAsync(IDirectory dir, ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            // Treaddir offsets are cookies: entry index + 1 of the last entry returned.
            if (offset == 0 || _entries.Count == 0)
            {
                _entries = await dir.ListAsync(ct).ConfigureAwait(false);
            }
            int index = (int)Math.Min(offset, (ulong)_entries.Count);
            int written = 0;
            while (index < _entries.Count)
            {
                INode node = _entries[index];
                byte type = node.Kind switch { NodeKind.Directory => 4, NodeKind.Symlink => 10, _ => 8 };
                var entry = new DirEntry(QidOf(node), (ulong)index + 1, type, node.Name);
                int size = DirEntryCodec.SizeOf(entry);
                if (written + size > buffer.Length)
                {
                    break;
                }
                var w = new WireWriter(buffer.Span[written..]);
                DirEntryCodec.Write(ref w, entry);
                written += w.Position;
                index++;
            }
            return written;
        }
    }
}
