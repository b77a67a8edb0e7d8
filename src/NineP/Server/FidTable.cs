using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.NineP.Server;

/// <summary>
/// The fids of one connection (intro(5): a fid is the client's 32-bit handle for a file), bounded: beyond
/// <c>capacity</c> a new fid gets EMFILE, so a client cannot make the server hold unbounded state. Safe for
/// concurrent requests of one connection. Errors are <see cref="VfsException"/>s with the texts clients see.
/// </summary>
public sealed class FidTable<T>(int capacity)
    where T : class
{
    private readonly Dictionary<uint, T> _fids = [];
    private readonly Lock _gate = new();

    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _fids.Count;
            }
        }
    }

    /// <summary>The state of <paramref name="fid"/>, else EBADF.</summary>
    public T Get(uint fid)
    {
        lock (_gate)
        {
            return _fids.TryGetValue(fid, out T? state) ? state : throw Unknown(fid);
        }
    }

    /// <summary>EBADF if <paramref name="fid"/> is in use (Tattach, Twalk's newfid: both must name a free fid).</summary>
    public void EnsureFree(uint fid)
    {
        lock (_gate)
        {
            if (_fids.ContainsKey(fid))
            {
                throw InUse(fid);
            }
        }
    }

    /// <summary>Adds a new fid: EBADF for NOFID or a fid in use, EMFILE beyond the bound.</summary>
    public void Add(uint fid, T state)
    {
        if (fid == P9.NoFid)
        {
            throw new VfsException(Errno.EBADF, "NOFID is not a valid fid");
        }
        lock (_gate)
        {
            if (_fids.ContainsKey(fid))
            {
                throw InUse(fid);
            }
            if (_fids.Count >= capacity)
            {
                throw new VfsException(Errno.EMFILE, "Too many fids");
            }
            _fids[fid] = state;
        }
    }

    /// <summary>Points an existing fid at new state (a walk onto itself, a create that makes the fid the new file).</summary>
    public void Replace(uint fid, T state)
    {
        lock (_gate)
        {
            if (!_fids.ContainsKey(fid))
            {
                throw Unknown(fid);
            }
            _fids[fid] = state;
        }
    }

    /// <summary>Takes <paramref name="fid"/> out of the table (Tclunk, Tremove), else EBADF; the caller closes it.</summary>
    public T Remove(uint fid)
    {
        lock (_gate)
        {
            return _fids.Remove(fid, out T? state) ? state : throw Unknown(fid);
        }
    }

    /// <summary>Empties the table (Tversion, end of connection) and returns what it held, for the caller to close.</summary>
    public T[] RemoveAll()
    {
        lock (_gate)
        {
            T[] all = [.. _fids.Values];
            _fids.Clear();
            return all;
        }
    }

    private static VfsException Unknown(uint fid) => new(Errno.EBADF, $"Unknown fid {fid}");

    private static VfsException InUse(uint fid) => new(Errno.EBADF, $"Fid {fid} already in use");
}
