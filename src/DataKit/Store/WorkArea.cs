using System.Security.Cryptography;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using Microsoft.Win32.SafeHandles;

namespace Kit.DataKit.Store;

/// <summary>
/// Where one transaction's edited files live: small ones in memory, larger ones in files on disk in the store's
/// private spill directory, and the byte budget they are charged to. Disposing it (the transaction ends) closes
/// every spill file and gives the bytes back.
/// </summary>
/// <remarks>
/// Spill files are created 0600 under <c>GITDIR/datakit-spill</c> (0700) with random names and unlinked at once, so
/// only this process can reach them and a crash leaves nothing behind. They are sparse: a write at a large offset
/// allocates only the blocks written (ext4, xfs, btrfs, tmpfs all keep holes).
/// </remarks>
public sealed class WorkArea : IDisposable
{
    /// <summary>Files up to this size stay in memory: most files are small, and a file per edit would cost a descriptor each.</summary>
    public const int InMemoryMax = 64 * 1024;

    private readonly List<SafeFileHandle> _open = [];
    private readonly List<IDisposable> _cursors = [];
    private readonly Lock _gate = new();
    private bool _disposed;

    public WorkArea(GitStore store, ByteBudget budget)
    {
        Store = store;
        Budget = budget;
    }

    public GitStore Store { get; }

    /// <summary>The transaction's budget; its limit is also the largest file (EFBIG beyond).</summary>
    public ByteBudget Budget { get; }

    /// <summary>Spill files open now: tests check that a transaction's end closes them.</summary>
    public int OpenFiles
    {
        get
        {
            lock (_gate)
            {
                return _open.Count;
            }
        }
    }

    /// <summary>A new empty, already unlinked spill file, read-write.</summary>
    public SafeFileHandle CreateSpillFile()
    {
        string dir = Path.Combine(Store.GitDir, "datakit-spill");
        if (!Directory.Exists(dir))
        {
            if (OperatingSystem.IsWindows())
            {
                Directory.CreateDirectory(dir);
            }
            else
            {
                Directory.CreateDirectory(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }
        string path = Path.Combine(dir, Convert.ToHexString(RandomNumberGenerator.GetBytes(12)));
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.None, BufferSize = 0 };
        if (!OperatingSystem.IsWindows())
        {
            options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        }
        // Unbuffered, so the stream is only a way to pass the create mode: reads and writes go through the handle.
        SafeFileHandle h = new FileStream(path, options).SafeFileHandle;
        if (!OperatingSystem.IsWindows())
        {
            File.Delete(path); // anonymous from here on: nothing to clean up after a crash
        }
        lock (_gate)
        {
            if (_disposed)
            {
                h.Dispose();
                throw new VfsException(Errno.ENOENT, "transaction closed");
            }
            _open.Add(h);
        }
        return h;
    }

    /// <summary>Disposes <paramref name="cursor"/> when the transaction ends (a read cursor over a stored blob).</summary>
    public void Track(IDisposable cursor)
    {
        lock (_gate)
        {
            if (_disposed)
            {
                cursor.Dispose();
                throw new VfsException(Errno.ENOENT, "transaction closed");
            }
            _cursors.Add(cursor);
        }
    }

    /// <summary>Closes a spill file the working tree no longer uses.</summary>
    public void Close(SafeFileHandle h)
    {
        lock (_gate)
        {
            _open.Remove(h);
        }
        h.Dispose();
    }

    /// <summary>EFBIG for a file end no budget could hold (also a negative offset: a u64 past 2^63).</summary>
    public void CheckFileSize(long offset, long end)
    {
        if (offset < 0 || end < 0 || end > Budget.Limit)
        {
            throw new VfsException(Errno.EFBIG, $"File too large: the transaction limit is {Budget.Limit} bytes");
        }
    }

    public void Dispose()
    {
        SafeFileHandle[] open;
        IDisposable[] cursors;
        lock (_gate)
        {
            _disposed = true;
            open = [.. _open];
            _open.Clear();
            cursors = [.. _cursors];
            _cursors.Clear();
        }
        foreach (SafeFileHandle h in open)
        {
            h.Dispose();
        }
        foreach (IDisposable c in cursors)
        {
            c.Dispose();
        }
        // Charges are released by the files themselves only while the transaction lives; the rest goes back here.
        Budget.Release(Budget.Used);
    }
}
