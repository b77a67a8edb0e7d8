using System.Net.Sockets;

namespace Kit.VpnKit.Nat;

/// <summary>
/// Buffered reads from one socket for the proxy relay: a bounded request or response head, a bounded line (chunk sizes,
/// trailers), a counted body, and whatever was read ahead, which the next step sends on first. One 64 KiB buffer.
/// </summary>
internal sealed class SocketReader(Socket socket)
{
    private readonly byte[] _buf = new byte[64 * 1024];
    private int _start;
    private int _end;

    public Socket Socket => socket;

    /// <summary>Bytes read and not yet taken.</summary>
    public ReadOnlyMemory<byte> Buffered => _buf.AsMemory(_start, _end - _start);

    public void Skip(int n) => _start += n;

    /// <summary>Reads more from the socket (at least one byte); false at the end of the stream or when the buffer is full.</summary>
    public async ValueTask<bool> FillAsync(CancellationToken cancel)
    {
        if (_start == _end)
        {
            _start = _end = 0;
        }
        else if (_end == _buf.Length && _start > 0)
        {
            Buffer.BlockCopy(_buf, _start, _buf, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        if (_end == _buf.Length)
        {
            return false;
        }
        int n = await socket.ReceiveAsync(_buf.AsMemory(_end), SocketFlags.None, cancel).ConfigureAwait(false);
        _end += n;
        return n > 0;
    }

    /// <summary>
    /// A head: the bytes up to and including the empty line that ends it (RFC 9112 §2.1; CRLF or a bare LF). Null at the
    /// end of the stream, or with <paramref name="oversized"/> set when <paramref name="max"/> bytes came without an end.
    /// Empty lines before a head are dropped (§2.2).
    /// </summary>
    public async ValueTask<byte[]?> ReadHeadAsync(int max, CancellationToken cancel, bool skipEmptyLines = true)
    {
        int scanned = 0;
        while (true)
        {
            ReadOnlySpan<byte> b = Buffered.Span;
            while (skipEmptyLines && scanned == 0 && !b.IsEmpty && b[0] is (byte)'\r' or (byte)'\n')
            {
                Skip(1);
                b = b[1..];
            }
            int end = HeadEnd(b, scanned);
            if (end > 0)
            {
                byte[] head = b[..end].ToArray();
                Skip(end);
                return head;
            }
            if (b.Length >= max)
            {
                Oversized = true;
                return null;
            }
            scanned = Math.Max(0, b.Length - 3);
            if (!await FillAsync(cancel).ConfigureAwait(false))
            {
                return null;
            }
        }
    }

    /// <summary>The last <see cref="ReadHeadAsync"/> stopped at its bound.</summary>
    public bool Oversized { get; private set; }

    /// <summary>One line with its LF, at most <paramref name="max"/> bytes; null at the end or beyond the bound.</summary>
    public async ValueTask<byte[]?> ReadLineAsync(int max, CancellationToken cancel)
    {
        int scanned = 0;
        while (true)
        {
            ReadOnlySpan<byte> b = Buffered.Span;
            int lf = b[scanned..].IndexOf((byte)'\n');
            if (lf >= 0)
            {
                byte[] line = b[..(scanned + lf + 1)].ToArray();
                Skip(line.Length);
                return line;
            }
            scanned = b.Length;
            if (b.Length >= max || !await FillAsync(cancel).ConfigureAwait(false))
            {
                return null;
            }
        }
    }

    /// <summary>Sends the next <paramref name="count"/> bytes of this stream to <paramref name="to"/>; false if it ended first.</summary>
    public async ValueTask<bool> CopyAsync(Socket to, long count, CancellationToken cancel)
    {
        while (count > 0)
        {
            if (_start == _end && !await FillAsync(cancel).ConfigureAwait(false))
            {
                return false;
            }
            int n = (int)Math.Min(count, _end - _start);
            await to.SendAsync(Buffered[..n], SocketFlags.None, cancel).ConfigureAwait(false);
            Skip(n);
            count -= n;
        }
        return true;
    }

    /// <summary>The offset just past the empty line that ends a head (CRLF CRLF or LF LF), else -1.</summary>
    internal static int HeadEnd(ReadOnlySpan<byte> b, int from)
    {
        for (int i = Math.Max(1, from); i < b.Length; i++)
        {
            if (b[i] == (byte)'\n' && (b[i - 1] == (byte)'\n' || (b[i - 1] == (byte)'\r' && i >= 2 && b[i - 2] == (byte)'\n')))
            {
                return i + 1;
            }
        }
        return -1;
    }
}
