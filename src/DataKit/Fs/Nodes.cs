using System.Text;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.DataKit.Fs;

/// <summary>The original's error texts (reference/datakit.md §1.10) with the errno Linux should see.</summary>
internal static class DkErrors
{
    public static VfsException ReadOnlyFile() => new(Errno.EROFS, "Read-only file");
    public static VfsException ReadOnlyDir() => new(Errno.EROFS, "Directory is read-only");
    public static VfsException OnlyDirs() => new(Errno.EPERM, "Can only contain directories");
    public static VfsException Exists() => new(Errno.EEXIST, "Already exists");
    public static VfsException NotFound() => VfsErrors.NotFound();
    public static VfsException IsDir() => new(Errno.EISDIR, "Is a directory");
    public static VfsException NotDir() => new(Errno.ENOTDIR, "Is not a directory");
    public static VfsException SeekInStream() => new(Errno.ESPIPE, "Attempt to seek in stream");
    public static VfsException Perm() => new(Errno.EPERM, "Operation not permitted");
    public static VfsException Invalid(string message) => new(Errno.EINVAL, message);

    /// <summary>Offset rules of normal files: negative/beyond-EOF offsets are errors, EOF itself reads empty.</summary>
    public static int ReadAt(ReadOnlySpan<byte> data, ulong offset, Span<byte> buffer)
    {
        if (offset > (ulong)data.Length)
        {
            throw new VfsException(Errno.EINVAL, $"Offset {offset} beyond end-of-file (len = {data.Length})");
        }
        int n = Math.Min(buffer.Length, data.Length - (int)offset);
        data.Slice((int)offset, n).CopyTo(buffer);
        return n;
    }
}

/// <summary>A synthetic directory whose behaviour is given by delegates.</summary>
internal sealed class SyntheticDir : IDirectory
{
    private readonly Func<IReadOnlyList<INode>> _list;
    private readonly Func<string, INode?> _lookup;

    public SyntheticDir(string name, string qidKey, Func<IReadOnlyList<INode>> list, Func<string, INode?> lookup)
    {
        Name = name;
        Path = QidPaths.Of("dir", qidKey);
        _list = list;
        _lookup = lookup;
    }

    /// <summary>A fixed set of children, looked up by name.</summary>
    public static SyntheticDir Fixed(string name, string qidKey, params INode[] children) =>
        new(name, qidKey, () => children, n => Array.Find(children, c => c.Name == n));

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.Directory;

    public Func<string, INode>? Mkdir { get; init; }
    public bool DirsOnly { get; init; }
    public Action<string>? Remove { get; init; }
    public Action<string, string>? Rename { get; init; }

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo(0));

    public ValueTask<INode?> LookupAsync(string name, CancellationToken ct) => ValueTask.FromResult(_lookup(name));

    public ValueTask<IReadOnlyList<INode>> ListAsync(CancellationToken ct) => ValueTask.FromResult(_list());

    public ValueTask<INode> CreateFileAsync(string name, bool executable, CancellationToken ct) =>
        throw (DirsOnly ? DkErrors.OnlyDirs() : DkErrors.ReadOnlyDir());

    public ValueTask<INode> CreateSymlinkAsync(string name, string target, CancellationToken ct) =>
        throw (DirsOnly ? DkErrors.OnlyDirs() : DkErrors.ReadOnlyDir());

    public ValueTask<INode> CreateDirectoryAsync(string name, CancellationToken ct) =>
        Mkdir is null ? throw DkErrors.ReadOnlyDir() : ValueTask.FromResult(Mkdir(name));

    public ValueTask RemoveAsync(string name, CancellationToken ct)
    {
        if (Remove is null)
        {
            throw DkErrors.ReadOnlyDir();
        }
        Remove(name);
        return ValueTask.CompletedTask;
    }

    public ValueTask RenameAsync(string oldName, string newName, CancellationToken ct)
    {
        if (Rename is null)
        {
            throw DkErrors.ReadOnlyDir();
        }
        Rename(oldName, newName);
        return ValueTask.CompletedTask;
    }
}

/// <summary>A read-only file whose content is computed when opened (status files such as head) or fixed.</summary>
internal sealed class ReadOnlyFile : IFile
{
    private readonly Func<byte[]> _content;

    public ReadOnlyFile(string name, string qidKey, Func<byte[]> content, bool executable = false)
    {
        Name = name;
        Path = QidPaths.Of("file", qidKey);
        _content = content;
        Executable = executable;
    }

    public static ReadOnlyFile OfText(string name, string qidKey, Func<string> text) => new(name, qidKey, () => Encoding.UTF8.GetBytes(text()));

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.File;
    public bool Executable { get; }

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo((ulong)_content().Length, Executable));

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct)
    {
        if (write)
        {
            throw DkErrors.ReadOnlyFile();
        }
        return ValueTask.FromResult<IOpenFile>(new Open(_content()));
    }

    public ValueTask TruncateAsync(ulong length, CancellationToken ct) => throw DkErrors.ReadOnlyFile();

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct) => throw DkErrors.ReadOnlyFile();

    private sealed class Open(byte[] data) : IOpenFile
    {
        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct) =>
            ValueTask.FromResult(DkErrors.ReadAt(data, offset, buffer.Span));
    }
}

/// <summary>The last result of a command file; belongs to the owner (transaction, branch, remote).</summary>
internal sealed class CommandResult
{
    public string Text { get; set; } = "";
}

/// <summary>
/// A command file (ctl, merge, fast-forward, fetch): each write runs the handler on the trimmed text and the
/// result becomes the readable content. Truncating to 0 is accepted so `echo x > f` works.
/// </summary>
internal sealed class CommandFile : IFile
{
    private readonly CommandResult _result;
    private readonly Func<string, CancellationToken, ValueTask<string>> _handler;

    public CommandFile(string name, string qidKey, CommandResult result, Func<string, CancellationToken, ValueTask<string>> handler)
    {
        Name = name;
        Path = QidPaths.Of("cmd", qidKey);
        _result = result;
        _handler = handler;
    }

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.File;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo((ulong)Encoding.UTF8.GetByteCount(_result.Text)));

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) => ValueTask.FromResult<IOpenFile>(new Open(this));

    public ValueTask TruncateAsync(ulong length, CancellationToken ct) =>
        length == 0 ? ValueTask.CompletedTask : throw new VfsException(Errno.EPERM, "Can't extend command file");

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct) =>
        executable ? throw new VfsException(Errno.EPERM, "Can't chmod special file") : ValueTask.CompletedTask;

    private sealed class Open(CommandFile file) : IOpenFile
    {
        private ulong _readOffset;
        private byte[]? _reading;

        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct)
        {
            if (offset == 0)
            {
                _reading = Encoding.UTF8.GetBytes(file._result.Text);
                _readOffset = 0;
            }
            else if (offset != _readOffset)
            {
                throw DkErrors.SeekInStream();
            }
            byte[] data = _reading ?? [];
            int n = (int)Math.Min((ulong)buffer.Length, (ulong)data.Length - Math.Min(offset, (ulong)data.Length));
            data.AsSpan((int)offset, n).CopyTo(buffer.Span);
            _readOffset += (ulong)n;
            return ValueTask.FromResult(n);
        }

        public async ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            string text = Encoding.UTF8.GetString(data.Span).Trim();
            file._result.Text = await file._handler(text, ct).ConfigureAwait(false);
            return data.Length;
        }
    }
}

/// <summary>A growable byte buffer behind key/value files (msg, parents, url).</summary>
internal sealed class TextBuffer
{
    private byte[] _data = [];
    private int _length;
    private readonly Lock _gate = new();

    public TextBuffer(string initial = "") => Set(initial);

    public string Text
    {
        get
        {
            lock (_gate)
            {
                return Encoding.UTF8.GetString(_data, 0, _length);
            }
        }
    }

    public int Length => _length;

    public void Set(string text)
    {
        lock (_gate)
        {
            _data = Encoding.UTF8.GetBytes(text);
            _length = _data.Length;
        }
    }

    public int Read(ulong offset, Span<byte> buffer)
    {
        lock (_gate)
        {
            return DkErrors.ReadAt(_data.AsSpan(0, _length), offset, buffer);
        }
    }

    public void Write(ulong offset, ReadOnlySpan<byte> bytes)
    {
        lock (_gate)
        {
            const long maxSize = 16 * 1024 * 1024;
            if (offset > maxSize)
            {
                throw new VfsException(Errno.EFBIG, "File too large");
            }
            long end = (long)offset + bytes.Length;
            if (end > maxSize)
            {
                throw new VfsException(Errno.EFBIG, "File too large");
            }
            if (end > _data.Length)
            {
                Array.Resize(ref _data, (int)Math.Max(end, _data.Length * 2L));
            }
            if ((int)offset > _length)
            {
                Array.Clear(_data, _length, (int)offset - _length);
            }
            bytes.CopyTo(_data.AsSpan((int)offset));
            _length = (int)Math.Max(_length, end);
        }
    }

    public void Truncate(ulong length)
    {
        lock (_gate)
        {
            if (length > 16 * 1024 * 1024)
            {
                throw new VfsException(Errno.EFBIG, "File too large");
            }
            if ((int)length > _data.Length)
            {
                Array.Resize(ref _data, (int)length);
            }
            if ((int)length > _length)
            {
                Array.Clear(_data, _length, (int)length - _length);
            }
            _length = (int)length;
        }
    }
}

/// <summary>A read-write text file over a <see cref="TextBuffer"/>.</summary>
internal sealed class BufferFile : IFile
{
    private readonly TextBuffer _buffer;

    public BufferFile(string name, string qidKey, TextBuffer buffer)
    {
        Name = name;
        Path = QidPaths.Of("kv", qidKey);
        _buffer = buffer;
    }

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.File;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo((ulong)_buffer.Length));

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) => ValueTask.FromResult<IOpenFile>(new Open(_buffer));

    public ValueTask TruncateAsync(ulong length, CancellationToken ct)
    {
        _buffer.Truncate(length);
        return ValueTask.CompletedTask;
    }

    public ValueTask SetExecutableAsync(bool executable, CancellationToken ct) => ValueTask.CompletedTask;

    private sealed class Open(TextBuffer buffer) : IOpenFile
    {
        public ValueTask<int> ReadAsync(ulong offset, Memory<byte> destination, CancellationToken ct) => ValueTask.FromResult(buffer.Read(offset, destination.Span));

        public ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            buffer.Write(offset, data.Span);
            return ValueTask.FromResult(data.Length);
        }
    }
}

/// <summary>
/// A stream file (head.live, reflog, tree.live, remotes/*/head), reference/datakit.md §3.1: each open is a session;
/// the first read returns the current line, the read after a chunk returns 0 bytes (so Linux's cat flushes), the
/// next read blocks until the value changes; latest value only; offsets must be sequential; stat length is 0.
/// </summary>
internal sealed class StreamFile : IFile
{
    private readonly Func<StreamSession> _open;

    public StreamFile(string name, string qidKey, Func<StreamSession> open)
    {
        Name = name;
        Path = QidPaths.Of("stream", qidKey);
        _open = open;
    }

    public string Name { get; }
    public ulong Path { get; }
    public NodeKind Kind => NodeKind.File;

    public ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct) => ValueTask.FromResult(new NodeInfo(0));

    public ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct) =>
        write ? throw DkErrors.ReadOnlyFile() : ValueTask.FromResult<IOpenFile>(_open());

    public ValueTask TruncateAsync(ulong length, CancellationToken ct) => throw DkErrors.ReadOnlyFile();
}

/// <summary>One open of a stream file.</summary>
internal sealed class StreamSession : IOpenFile
{
    private readonly Func<string> _compute;
    private readonly Func<Task> _nextChange;
    private readonly Func<string, string> _format;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private string _value;
    private byte[] _pending;
    private int _pendingOffset;
    private bool _flushNext;
    private ulong _offset;

    /// <param name="compute">The current value (compared as text; equal values are not re-sent).</param>
    /// <param name="nextChange">A task completing on the next store change.</param>
    /// <param name="format">Value to line.</param>
    /// <param name="initialLine">What the first read returns (null: the current value's line).</param>
    public StreamSession(Func<string> compute, Func<Task> nextChange, Func<string, string> format, string? initialLine = null)
    {
        _compute = compute;
        _nextChange = nextChange;
        _format = format;
        _value = compute();
        _pending = Encoding.UTF8.GetBytes(initialLine ?? format(_value));
    }

    public async ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct)
    {
        await _gate.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (offset != _offset)
            {
                throw DkErrors.SeekInStream();
            }
            while (true)
            {
                if (_pendingOffset < _pending.Length)
                {
                    int n = Math.Min(buffer.Length, _pending.Length - _pendingOffset);
                    _pending.AsSpan(_pendingOffset, n).CopyTo(buffer.Span);
                    _pendingOffset += n;
                    _offset += (ulong)n;
                    _flushNext = true;
                    return n;
                }
                if (_flushNext)
                {
                    _flushNext = false;
                    return 0;
                }
                // Take the change task before computing, so a change between the two is not missed.
                Task next = _nextChange();
                string now = _compute();
                if (now != _value)
                {
                    _value = now;
                    _pending = Encoding.UTF8.GetBytes(_format(now));
                    _pendingOffset = 0;
                    continue;
                }
                await next.WaitAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            _gate.Release();
        }
    }
}
