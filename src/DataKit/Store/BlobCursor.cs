using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// Reads one blob's content forward from a source that inflates it as it goes, keeping a bounded ring of
/// <see cref="WindowSize"/> bytes: a quarter window of recent history (a client's out-of-order readahead) and the rest
/// inflated ahead of the reader. Memory per open file is the ring, the source's file buffer and the inflater's state,
/// whatever the blob's size.
/// A read inside the ring is served from it; a read further back restarts the source from the blob's first byte; a
/// read further ahead inflates and drops the bytes in between.
/// </summary>
/// <remarks>
/// Why read ahead: a 9P client such as diodcat (or the kernel without readahead) sends one Tread at a time and
/// consumes the reply before the next. Inflating on demand puts the inflate of every chunk in series with the client;
/// after each read the next chunks are inflated while the client is busy, so the next Tread finds its bytes ready, as
/// a file server's page cache would have them (measured: 0.45 ms from a 1 MiB Tread to its reply instead of 1.45 ms;
/// issue 16, docs/benchmarks.md). That work runs on the connection's thread after the reply is sent when the
/// transport offers it (<see cref="AfterReply"/>), else on a pump on the thread pool. The ring needs no compaction
/// copies: offset o lives at o % ring length.
/// Reads must be serialised by the caller (the open file that owns a cursor does); the read-ahead is the only other
/// thread. One "producer" at a time inflates: the read-ahead, or a read that finds it idle and its bytes missing.
/// </remarks>
public sealed class BlobCursor : IDisposable
{
    /// <summary>Bytes kept: four 1 MiB 9P reads (diodcat -m 1048576, Linux msize up to 512 KiB).</summary>
    public const int WindowSize = 4 * 1024 * 1024;

    // Recent bytes kept behind a read, for readahead that arrives slightly out of order.
    private const int History = WindowSize / 4;

    // Bytes inflated per step before they are published: a waiting read sees progress at least this often.
    private const int StepSize = 256 * 1024;

    private readonly Func<Stream> _open;
    private readonly object _gate = new(); // Monitor, for Wait/PulseAll
    private Stream? _first;
    private Stream? _source;
    private byte[]? _ring;
    private long _lo;        // the lowest offset still in the ring
    private long _hi;        // the end of what was inflated
    private long _keepFrom;  // a producer never overwrites this offset or any after it
    private bool _producing; // someone holds the producer role
    private bool _pumpQueued;
    private bool _disposed;
    private int _aheadBudget = StepSize; // what ReadAhead inflates: the last read's size, at least a step
    private VfsException? _failure;

    /// <param name="length">The blob's size from its header, checked against what the source yields.</param>
    /// <param name="open">Opens a fresh source positioned at the content's first byte.</param>
    /// <param name="first">A source already open at the content's first byte (the one whose header gave the length), used by the first read.</param>
    public BlobCursor(long length, Func<Stream> open, Stream? first = null)
    {
        Length = length;
        _open = open;
        _first = first;
    }

    public long Length { get; }

    /// <summary>Times the source was (re)opened: tests check that readahead inside the window does not restart it.</summary>
    public int Opens { get; private set; }

    /// <summary>How far the source has been inflated: tests check that the pump reads ahead of the reader.</summary>
    public long Inflated
    {
        get
        {
            lock (_gate)
            {
                return _hi;
            }
        }
    }

    /// <summary>
    /// Copies content from <paramref name="offset"/> into <paramref name="buffer"/>; returns the count, 0 at the end.
    /// At most half a window is returned per call (a short read, which 9P clients continue from).
    /// </summary>
    public int Read(long offset, Span<byte> buffer)
    {
        if (offset < 0 || offset > Length)
        {
            throw new VfsException(Errno.EINVAL, $"Offset {offset} beyond end-of-file (len = {Length})");
        }
        int want = (int)Math.Min(Math.Min(buffer.Length, Length - offset), WindowSize / 2);
        if (want == 0)
        {
            return 0;
        }
        long end = offset + want;
        bool produce = false;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_source is null || offset < _lo)
            {
                Restart();
            }
            // Checked and set under one lock with the producer's reservations: bytes from here on stay put until the
            // next read, so the copy below needs no lock.
            _keepFrom = Math.Max(_lo, offset - History);
            while (_hi < end && _failure is null && !produce)
            {
                if (_producing)
                {
                    Monitor.Wait(_gate);
                }
                else
                {
                    _producing = produce = true;
                }
            }
        }
        if (produce)
        {
            try
            {
                while (_hi < end && Step())
                {
                }
            }
            finally
            {
                EndProducing();
            }
        }
        // The read that takes the last byte also answers for the end check (CheckEnd): a damaged trailer fails it.
        if (_hi < end || (end == Length && _failure is not null))
        {
            throw _failure ?? new VfsException(Errno.EIO, "blob read failed");
        }
        byte[] ring = _ring!;
        int at = (int)(offset % ring.Length);
        int first = Math.Min(want, ring.Length - at);
        ring.AsSpan(at, first).CopyTo(buffer);
        ring.AsSpan(0, want - first).CopyTo(buffer[first..]);
        _aheadBudget = Math.Max(want, StepSize);
        if (!AfterReply.TryDefer(static c => ((BlobCursor)c).ReadAhead(), this))
        {
            Kick();
        }
        return want;
    }

    /// <summary>
    /// Read-ahead on the connection's thread once the reply is sent (<see cref="AfterReply"/>): as much as the last
    /// read took (at least a step), so a reader in steady state finds the ring full again with no thread woken; what is
    /// left of a ring that is far from full (a first read, a seek) goes to the pump on the thread pool.
    /// </summary>
    private void ReadAhead()
    {
        lock (_gate)
        {
            if (_producing || _disposed || _failure is not null)
            {
                return;
            }
            _producing = true;
        }
        try
        {
            long stop = _hi + _aheadBudget; // _hi moves only under the producer role, which this thread holds
            while (_hi < stop && Step())
            {
            }
        }
        finally
        {
            EndProducing();
        }
        Kick();
    }

    /// <summary>Reopens the source at the first byte. Under the lock; waits for a running producer step to end.</summary>
    private void Restart()
    {
        while (_producing)
        {
            Monitor.Wait(_gate);
        }
        _source?.Dispose();
        _source = null;
        _source = _first ?? _open();
        _first = null;
        Opens++;
        _ring ??= GC.AllocateUninitializedArray<byte>((int)Math.Min(WindowSize, Math.Max(Length, 1)));
        _lo = _hi = _keepFrom = 0;
        _failure = null;
    }

    /// <summary>Starts the pump when the ring has room ahead and nobody is producing.</summary>
    private void Kick()
    {
        lock (_gate)
        {
            if (_producing || _pumpQueued || _disposed || _failure is not null || _hi >= Math.Min(Length, _keepFrom + _ring!.Length))
            {
                return;
            }
            _pumpQueued = true;
        }
        ThreadPool.UnsafeQueueUserWorkItem(static c => c.Pump(), this, preferLocal: false);
    }

    private void Pump()
    {
        lock (_gate)
        {
            _pumpQueued = false;
            if (_producing || _disposed)
            {
                return;
            }
            _producing = true;
        }
        try
        {
            while (Step())
            {
            }
        }
        finally
        {
            EndProducing();
        }
    }

    /// <summary>
    /// One inflate into the ring, by the producer: reserves room under the lock, inflates outside it, publishes.
    /// False when there is nothing to do (the end, a full ring, a failure, disposal). Never throws: a failure is kept
    /// for the read that needs the bytes (the pump runs on the thread pool, where an exception would end the process).
    /// </summary>
    private bool Step()
    {
        Stream source;
        byte[] ring;
        int at, room;
        lock (_gate)
        {
            if (_disposed || _failure is not null)
            {
                return false;
            }
            ring = _ring!;
            long start = _hi;
            at = (int)(start % ring.Length);
            room = (int)Math.Min(Math.Min(StepSize, ring.Length - at), Math.Min(_keepFrom + ring.Length, Length) - start);
            if (room <= 0)
            {
                return false;
            }
            // The bytes about to be overwritten leave the ring now, before any reader can look at them.
            _lo = Math.Max(_lo, start + room - ring.Length);
            source = _source!;
        }
        int n = 0;
        VfsException? failure = null;
        try
        {
            n = source.Read(ring.AsSpan(at, room));
            if (n == 0)
            {
                failure = new VfsException(Errno.EIO, $"blob ended at {_hi} of {Length} bytes");
            }
            else if (_hi + n == Length)
            {
                failure = CheckEnd(source);
            }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            failure = e as VfsException ?? new VfsException(Errno.EIO, $"blob read failed at {_hi}: {e.Message}");
        }
        lock (_gate)
        {
            _hi += n;
            _failure ??= failure;
            Monitor.PulseAll(_gate);
        }
        return n > 0;
    }

    /// <summary>
    /// After the last byte the header promised, the source must end. Asking it for one more byte is what makes the
    /// inflater read the zlib trailer and compare its Adler-32 with the bytes it produced (RFC 1950 section 2.2, ADLER32):
    /// a reader that stops at the length would never see a damaged trailer or a stream longer than its header. So the
    /// check costs nothing but this call, and the read that takes the last bytes reports a failure (EIO).
    /// </summary>
    private VfsException? CheckEnd(Stream source)
    {
        Span<byte> one = stackalloc byte[1];
        return source.Read(one) == 0 ? null : new VfsException(Errno.EIO, $"blob is longer than its header's {Length} bytes");
    }

    private void EndProducing()
    {
        lock (_gate)
        {
            _producing = false;
            if (_disposed)
            {
                DisposeSources();
            }
            Monitor.PulseAll(_gate);
        }
    }

    private void DisposeSources()
    {
        _first?.Dispose();
        _first = null;
        _source?.Dispose();
        _source = null;
    }

    /// <summary>Releases the source at once, or when the running producer step ends (a source is never closed under a read).</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            _disposed = true;
            if (!_producing)
            {
                DisposeSources();
            }
        }
    }
}

/// <summary>Opens a blob's content as a forward stream without loading it, from a loose object or through git.</summary>
public static class BlobSources
{
    // Reads of the object file: SequentialScan widens the kernel's readahead. 1 MiB requests showed no gain over
    // 256 KiB (docs/benchmarks.md, issue 16) and cost 768 KiB more per open file.
    internal const int ReadBuffer = 256 * 1024;

    /// <summary>
    /// The content from wherever it is: a loose object, else a pack entry stored whole, else through git (deltas,
    /// alternates). A restart uses this too, so a repack between two reads only changes where the bytes come from.
    /// </summary>
    public static Stream Open(string gitDir, ObjectId id) =>
        OpenLoose(gitDir, id, out _) ?? PackedBlob.Open(gitDir, id, out _) ?? OpenWithGit(gitDir, id);

    /// <summary>
    /// A loose object (objects/xx/rest: zlib of "blob SIZE\0" + content), inflated forward; null when the object is
    /// not loose (packed, or in an alternate).
    /// </summary>
    public static Stream? OpenLoose(string gitDir, ObjectId id, out long size)
    {
        size = 0;
        string path = Path.Combine(gitDir, "objects", id.Sha[..2], id.Sha[2..]);
        FileStream file;
        try
        {
            file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, ReadBuffer, FileOptions.SequentialScan);
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
        {
            return null;
        }
        var z = new ZLibStream(file, CompressionMode.Decompress);
        try
        {
            size = ReadHeader(z);
            return z;
        }
        catch
        {
            z.Dispose();
            throw;
        }
    }

    /// <summary>Parses "blob SIZE\0" (gitformat-loose: "&lt;type&gt; &lt;size&gt;\0"); a longer or other header is EIO.</summary>
    internal static long ReadHeader(Stream z)
    {
        Span<byte> header = stackalloc byte[32];
        int n = 0;
        while (true)
        {
            int b = z.ReadByte();
            if (b < 0 || n == header.Length)
            {
                throw new VfsException(Errno.EIO, "bad loose object header");
            }
            if (b == 0)
            {
                break;
            }
            header[n++] = (byte)b;
        }
        ReadOnlySpan<byte> h = header[..n];
        if (!h.StartsWith("blob "u8) || !long.TryParse(h[5..], System.Globalization.NumberStyles.None, null, out long size))
        {
            throw new VfsException(Errno.EIO, $"not a blob: {Encoding.ASCII.GetString(h)}");
        }
        return size;
    }

    /// <summary>
    /// <c>git cat-file blob</c>'s output. The git CLI is used here because libgit2 cannot stream a packed object
    /// (Blob.GetContentStream loads it whole into the server's memory); git streams undeltified objects and, for a
    /// delta, spends its own process's memory, which ends with the read.
    /// </summary>
    public static Stream OpenWithGit(string gitDir, ObjectId id)
    {
        var psi = new ProcessStartInfo("git")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (string a in (string[])["-c", $"safe.directory={gitDir.TrimEnd('/')}", "--git-dir", gitDir, "cat-file", "blob", id.Sha])
        {
            psi.ArgumentList.Add(a);
        }
        Process p = Process.Start(psi) ?? throw new VfsException(Errno.EIO, "cannot start git");
        p.StandardInput.Close();
        p.ErrorDataReceived += (_, _) => { }; // drained so a chatty git never blocks on a full pipe
        p.BeginErrorReadLine();
        return new ProcessOutputStream(p);
    }

    /// <summary>A child's stdout; disposing kills the child if it is still writing, so a restart or close never waits.</summary>
    private sealed class ProcessOutputStream(Process process) : Stream
    {
        private readonly Stream _out = process.StandardOutput.BaseStream;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => _out.Read(buffer, offset, count);

        public override int Read(Span<byte> buffer) => _out.Read(buffer);

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                try
                {
                    if (!process.HasExited)
                    {
                        process.Kill();
                    }
                    process.WaitForExit(5000);
                }
                catch (InvalidOperationException)
                {
                }
                _out.Dispose();
                process.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
