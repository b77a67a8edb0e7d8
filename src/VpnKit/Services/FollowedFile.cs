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
        byte[]? bytes = info.Exists ? ReadBytes() : null;
        byte[]? hash = bytes is null ? null : System.Security.Cryptography.SHA256.HashData(bytes);
        if (hash is not null && _seenHash is not null ? hash.AsSpan().SequenceEqual(_seenHash) : hash == _seenHash)
        {
            return false;
        }
        _seenHash = hash;
        _value = bytes is null ? _missing : parse(System.Text.Encoding.UTF8.GetString(bytes));
        return true;
    }

    /// <summary>The file's first <see cref="MaxBytes"/> bytes, or null when it cannot be read now.</summary>
    private byte[]? ReadBytes()
    {
        try
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            byte[] bytes = new byte[(int)Math.Min(stream.Length, MaxBytes)];
            int n = stream.ReadAtLeast(bytes, bytes.Length, throwOnEndOfStream: false);
            return n == bytes.Length ? bytes : bytes[..n];
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // Unreadable now: answered as missing; the next change of stamp tries again.
        }
    }
}
