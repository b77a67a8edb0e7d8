namespace Kit.VpnKit.Services;

/// <summary>
/// A host file the gateway follows (resolv.conf, hosts): parsed again when its modification time or size changes,
/// looked at no more than once per <see cref="CheckInterval"/> however many queries arrive. A stat per second costs
/// nothing, and unlike an inotify watch it survives what resolvconf and NetworkManager do to these files (replace them
/// by rename, or swap the symlink they are). Two writes of the same size within one tick of the kernel's file clock
/// (a few ms) leave the same stamp, so a file modified in the last <see cref="SettleTime"/> is read again on every
/// check and compared by content.
/// </summary>
internal sealed class FollowedFile<T>(string path, Func<string, T> parse, T missing)
{
    private readonly T _missing = missing;
    /// <summary>How stale a followed file may be.</summary>
    public static readonly TimeSpan CheckInterval = TimeSpan.FromSeconds(1);

    /// <summary>Largest file read: a hosts file of ad-blocking lists is a few MiB; beyond this the rest is ignored.</summary>
    public const int MaxBytes = 8 << 20;

    /// <summary>How long after its last modification a file is compared by content rather than by stamp.</summary>
    public static readonly TimeSpan SettleTime = TimeSpan.FromSeconds(2);

    private readonly Lock _gate = new();
    private long _nextCheck = long.MinValue;
    private (long Ticks, long Length) _seen = (-1, -1);
    private byte[]? _seenHash;
    private T _value = missing;

    public string Path => path;

    /// <summary>Fires (outside the lock) when a check found new contents.</summary>
    public event Action<T>? Changed;

    public T Current
    {
        get
        {
            T value;
            bool changed = false;
            lock (_gate)
            {
                long now = Environment.TickCount64;
                if (now >= _nextCheck)
                {
                    _nextCheck = now + (long)CheckInterval.TotalMilliseconds;
                    changed = Refresh();
                }
                value = _value;
            }
            if (changed)
            {
                Changed?.Invoke(value);
            }
            return value;
        }
    }

    private bool Refresh()
    {
        var info = new FileInfo(path);
        (long, long) stamp = info.Exists ? (info.LastWriteTimeUtc.Ticks, info.Length) : (0, -1);
        bool settled = !info.Exists || DateTime.UtcNow - info.LastWriteTimeUtc > SettleTime;
        if (stamp == _seen && settled)
        {
            return false;
        }
        _seen = stamp;
        string? text = info.Exists ? ReadText() : null;
        byte[]? hash = text is null ? null : System.Security.Cryptography.SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(text));
        if (hash is not null && _seenHash is not null ? hash.AsSpan().SequenceEqual(_seenHash) : hash == _seenHash)
        {
            return false;
        }
        _seenHash = hash;
        _value = text is null ? _missing : parse(text);
        return true;
    }

    /// <summary>The file's text (at most <see cref="MaxBytes"/>), or null when it cannot be read now.</summary>
    private string? ReadText()
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(new BoundedStream(stream, MaxBytes));
            return reader.ReadToEnd();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // Unreadable now: answered as missing; the next change of stamp tries again.
        }
    }

    /// <summary>Reads at most a fixed number of bytes of the inner stream.</summary>
    private sealed class BoundedStream(Stream inner, long limit) : Stream
    {
        private long _left = limit;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_left <= 0)
            {
                return 0;
            }
            int n = inner.Read(buffer[..(int)Math.Min(buffer.Length, _left)]);
            _left -= n;
            return n;
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
