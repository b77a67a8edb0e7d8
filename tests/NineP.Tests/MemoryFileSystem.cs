using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.NineP.Tests;

/// <summary>A small writable in-memory tree, plus a "stream" file whose reads block until cancelled, for server tests.</summary>
internal sealed class MemoryFileSystem : IFileSystemSession
{
    private static long s_nextPath = 1;

    public MemoryFileSystem()
    {
        Root = new MemDir("");
    }

    public MemDir Root { get; }

    public ValueTask<IDirectory> AttachAsync(string uname, string aname, CancellationToken ct) => ValueTask.FromResult<IDirectory>(Root);

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    internal sealed class MemDir(string name) : IDirectory
    {
        private readonly Dictionary<string, INode> _children = new(StringComparer.Ordinal);

        public string Name { get; set; } = name;
        public ulong Path { get; } = (ulong)Interlocked.Increment(ref s_nextPath);
        public NodeKind Kind => NodeKind.Directory;

        public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo(0));

        public void Add(INode node)
        {
            lock (_children)
            {
                _children[node.Name] = node;
            }
        }

        public ValueTask<INode?> LookupAsync(string name, CancellationToken ct)
        {
            lock (_children)
            {
                return ValueTask.FromResult(_children.GetValueOrDefault(name));
            }
        }

        public ValueTask<IReadOnlyList<INode>> ListAsync(CancellationToken ct)
        {
            lock (_children)
            {
                return ValueTask.FromResult<IReadOnlyList<INode>>(_children.Values.OrderBy(n => n.Name, StringComparer.Ordinal).ToArray());
            }
        }

        public ValueTask<INode> CreateFileAsync(string name, bool executable, CancellationToken ct)
        {
            var f = new MemFile(name) { Executable = executable };
            Add(f);
            return ValueTask.FromResult<INode>(f);
        }

        public ValueTask<INode> CreateDirectoryAsync(string name, CancellationToken ct)
        {
            lock (_children)
            {
                if (_children.ContainsKey(name))
                {
                    throw new VfsException(Errno.EEXIST, "File exists");
                }
            }
            var d = new MemDir(name);
            Add(d);
            return ValueTask.FromResult<INode>(d);
        }

        public ValueTask<INode> CreateSymlinkAsync(string name, string target, CancellationToken ct)
        {
            var f = new MemFile(name) { Target = target };
            Add(f);
            return ValueTask.FromResult<INode>(f);
        }

        public ValueTask RemoveAsync(string name, CancellationToken ct)
        {
            lock (_children)
            {
                if (!_children.Remove(name))
                {
                    throw VfsErrors.NotFound();
                }
            }
            return ValueTask.CompletedTask;
        }

        public ValueTask RenameAsync(string oldName, string newName, CancellationToken ct)
        {
            lock (_children)
            {
                if (!_children.Remove(oldName, out INode? node))
                {
                    throw VfsErrors.NotFound();
                }
                switch (node)
                {
                    case MemFile f:
                        f.Name = newName;
                        break;
                    case MemDir d:
                        d.Name = newName;
                        break;
                }
                _children[newName] = node;
            }
            return ValueTask.CompletedTask;
        }
    }

    internal sealed class MemFile(string name) : IFile, IOpenFile
    {
        private byte[] _data = [];
        private int _length;

        public string Name { get; set; } = name;
        public ulong Path { get; } = (ulong)Interlocked.Increment(ref s_nextPath);
        public NodeKind Kind => Target is null ? NodeKind.File : NodeKind.Symlink;
        public bool Executable { get; set; }
        public string? Target { get; set; }

        public byte[] Content
        {
            get
            {
                lock (this)
                {
                    return _data[.._length];
                }
            }
            set
            {
                lock (this)
                {
                    _data = value.ToArray();
                    _length = value.Length;
                }
            }
        }

        public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo((ulong)_length, Executable));

        public ValueTask SetExecutableAsync(bool executable, CancellationToken ct)
        {
            Executable = executable;
            return ValueTask.CompletedTask;
        }

        public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) => ValueTask.FromResult<IOpenFile>(this);

        public ValueTask<string> ReadLinkAsync(CancellationToken ct) => ValueTask.FromResult(Target ?? throw new VfsException(Errno.EINVAL, "Not a symlink"));

        public ValueTask TruncateAsync(ulong length, CancellationToken ct)
        {
            lock (this)
            {
                Array.Resize(ref _data, Math.Max(_data.Length, (int)length));
                if ((int)length > _length)
                {
                    Array.Clear(_data, _length, (int)length - _length);
                }
                _length = (int)length;
            }
            return ValueTask.CompletedTask;
        }

        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            lock (this)
            {
                if (offset >= (ulong)_length)
                {
                    return ValueTask.FromResult(0);
                }
                int n = Math.Min(buffer.Length, _length - (int)offset);
                _data.AsSpan((int)offset, n).CopyTo(buffer.Span);
                return ValueTask.FromResult(n);
            }
        }

        public ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            lock (this)
            {
                int end = (int)offset + data.Length;
                if (end > _data.Length)
                {
                    Array.Resize(ref _data, Math.Max(end, _data.Length * 2));
                }
                if ((int)offset > _length)
                {
                    Array.Clear(_data, _length, (int)offset - _length);
                }
                data.Span.CopyTo(_data.AsSpan((int)offset));
                _length = Math.Max(_length, end);
                return ValueTask.FromResult(data.Length);
            }
        }
    }

    /// <summary>A file whose reads block until the request is cancelled (a stand-in for DataKit's *.live streams).</summary>
    internal sealed class BlockingFile(string name) : IFile, IOpenFile
    {
        public string Name => name;
        public ulong Path { get; } = (ulong)Interlocked.Increment(ref s_nextPath);
        public NodeKind Kind => NodeKind.File;
        public int Cancelled;

        public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo(0));

        public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) => ValueTask.FromResult<IOpenFile>(this);

        public async ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            try
            {
                await Task.Delay(Timeout.Infinite, ct);
            }
            catch (OperationCanceledException)
            {
                Interlocked.Increment(ref Cancelled);
                throw;
            }
            return 0;
        }
    }
}
