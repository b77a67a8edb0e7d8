using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// Reads one blob's content forward from a source that inflates it as it goes, keeping only a bounded window of
/// recent bytes: memory per open file is <see cref="WindowSize"/>, a 256 KiB file buffer and the inflater's state,
/// whatever the blob's size.
/// A read inside the window is served from it (a client's out-of-order readahead); a read further back restarts the
/// source from the blob's first byte; a read further ahead inflates and drops the bytes in between.
/// </summary>
/// <remarks>Not thread-safe: the open file that owns a cursor serialises its reads.</remarks>
public sealed class BlobCursor : IDisposable
{
    /// <summary>Bytes of recent content kept: four 1 MiB 9P reads (diodcat -m 1048576, Linux msize up to 512 KiB).</summary>
    public const int WindowSize = 4 * 1024 * 1024;

    private readonly Func<Stream> _open;
    private Stream? _source;
    private byte[]? _window;
    private long _windowStart; // blob offset of _window[0]
    private int _windowLength;

    /// <param name="length">The blob's size from its header, checked against what the source yields.</param>
    /// <param name="open">Opens a fresh source positioned at the content's first byte.</param>
    /// <param name="first">A source already open at the content's first byte (the one whose header gave the length), used by the first read.</param>
    public BlobCursor(long length, Func<Stream> open, Stream? first = null)
    {
        Length = length;
        _open = open;
        _first = first;
    }

    private Stream? _first;

    public long Length { get; }

    /// <summary>Times the source was (re)opened: tests check that readahead inside the window does not restart it.</summary>
    public int Opens { get; private set; }

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
        if (_source is null || offset < _windowStart)
        {
            Restart();
        }
        while (_windowStart + _windowLength < offset + want)
        {
            Fill(offset);
        }
        _window.AsSpan((int)(offset - _windowStart), want).CopyTo(buffer);
        return want;
    }

    private void Restart()
    {
        _source?.Dispose();
        _source = null;
        _source = _first ?? _open();
        _first = null;
        Opens++;
        _window ??= new byte[(int)Math.Min(WindowSize, Math.Max(Length, 1))];
        _windowStart = 0;
        _windowLength = 0;
    }

    /// <summary>Inflates more into the window, first dropping what lies well before <paramref name="offset"/>.</summary>
    private void Fill(long offset)
    {
        byte[] window = _window!;
        if (_windowLength == window.Length)
        {
            // Keep a quarter window of history before the read (readahead arrives slightly out of order). A read
            // asks for at most half a window, so a full window that still lacks its end always has this much to drop.
            long drop = Math.Clamp(offset - _windowStart - (window.Length / 4), 0, _windowLength);
            if (drop == 0)
            {
                drop = _windowLength; // unreachable by the argument above; never loop without room
            }
            window.AsSpan((int)drop, _windowLength - (int)drop).CopyTo(window);
            _windowStart += drop;
            _windowLength -= (int)drop;
        }
        int n = _source!.Read(window.AsSpan(_windowLength));
        if (n == 0)
        {
            throw new VfsException(Errno.EIO, $"blob ended at {_windowStart + _windowLength} of {Length} bytes");
        }
        _windowLength += n;
    }

    public void Dispose()
    {
        _first?.Dispose();
        _first = null;
        _source?.Dispose();
        _source = null;
        _window = null;
    }
}

/// <summary>Opens a blob's content as a forward stream without loading it, from a loose object or through git.</summary>
public static class BlobSources
{
    // Reads of the object file: SequentialScan widens the kernel's readahead. 1 MiB requests showed no gain over
    // 256 KiB (docs/benchmarks.md, issue 16) and cost 768 KiB more per open file.
    private const int ReadBuffer = 256 * 1024;

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
