using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.DataKit.Store;

/// <summary>
/// Bytes that transaction working trees may hold, as a chain: a transaction's budget draws on its connection's, which
/// draws on the server's. A charge succeeds only if every budget on the chain has room, so no client can take more
/// than its share, nor all clients together more than the server allows.
/// </summary>
/// <remarks>Thread-safe: connections charge the shared server budget concurrently.</remarks>
public sealed class ByteBudget
{
    private readonly ByteBudget? _parent;
    private readonly string _what;
    private long _used;

    /// <param name="limit">Bytes this budget allows in all.</param>
    /// <param name="parent">The budget this one draws on too, or null at the top.</param>
    /// <param name="what">Names the budget in the error ("transaction", "connection", "server").</param>
    public ByteBudget(long limit, ByteBudget? parent, string what)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(limit);
        Limit = limit;
        _parent = parent;
        _what = what;
    }

    public long Limit { get; }

    public long Used => Interlocked.Read(ref _used);

    /// <summary>Takes <paramref name="bytes"/> from this budget and every one above it, or from none.</summary>
    /// <exception cref="VfsException">ENOSPC, naming the budget that is full.</exception>
    public void Charge(long bytes)
    {
        if (bytes <= 0)
        {
            return;
        }
        if (Interlocked.Add(ref _used, bytes) > Limit)
        {
            Interlocked.Add(ref _used, -bytes);
            throw new VfsException(Errno.ENOSPC, $"No space left: the {_what} limit of {Limit} bytes is reached");
        }
        try
        {
            _parent?.Charge(bytes);
        }
        catch
        {
            Interlocked.Add(ref _used, -bytes);
            throw;
        }
    }

    /// <summary>Gives back what <see cref="Charge"/> took.</summary>
    public void Release(long bytes)
    {
        if (bytes <= 0)
        {
            return;
        }
        Interlocked.Add(ref _used, -bytes);
        _parent?.Release(bytes);
    }
}
