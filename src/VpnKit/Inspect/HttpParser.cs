using System.Text;

namespace Kit.VpnKit.Inspect;

/// <summary>What the response head says about the message that follows (RFC 9112 §6.3).</summary>
internal enum ResponseKind
{
    /// <summary>A body framed by the headers (Content-Length, chunked, or until close).</summary>
    Framed,
    /// <summary>No body: a response to HEAD, 204, 304.</summary>
    Bodyless,
    /// <summary>A 1xx interim response: no body, and the final response is still to come.</summary>
    Interim,
    /// <summary>The connection stops speaking HTTP (101 Switching Protocols, a 2xx to CONNECT).</summary>
    Tunnel,
}

internal interface IHttpSink
{
    void MessageStart(bool request);
    /// <summary>A request line was read (before its header fields, so a request whose fields are bad still has a path).</summary>
    void RequestLine(string method, string target, string version);
    void RequestHead(string? host, long headerBytes);
    ResponseKind ResponseHead(int status, string? reason, string version, long headerBytes);
    void MessageDone(bool request, long bodyBytes);
    /// <summary>Parsing of this direction stopped: <paramref name="state"/> is "malformed" or "oversized".</summary>
    void Failed(bool request, string state, string reason);
}

/// <summary>
/// An incremental HTTP/1.x message framer for one direction of a stream (RFC 9112): it finds each message's head,
/// reads the few fields the inspector records, and counts the body by its framing (§6: Content-Length, chunked, or
/// until the connection closes) without keeping it. Memory is bounded by <see cref="MaxHeaderBytes"/>: a head larger
/// than that is "oversized" and parsing stops. Bad input stops parsing with a reason; nothing here throws on it.
/// </summary>
internal sealed class HttpParser(bool request, IHttpSink sink)
{
    /// <summary>The largest head looked at (servers commonly refuse 8-16 KiB and more; RFC 9110 §4.1 leaves it to them).</summary>
    public const int MaxHeaderBytes = 32 * 1024;
    private const int MaxChunkLine = 1024;

    private enum S
    {
        Start,
        Head,
        Body,
        ChunkSize,
        ChunkData,
        ChunkCrlf,
        Trailer,
        UntilClose,
        Dead,
    }

    private S _s;
    private byte[] _buf = [];
    private int _len;
    private long _remaining;
    private long _body;
    private long _headBytes;

    public bool Dead => _s == S.Dead;

    /// <summary>Bytes held now (the bound the tests check).</summary>
    public int Buffered => _buf.Length;

    public void Feed(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty && _s != S.Dead)
        {
            switch (_s)
            {
                case S.Start:
                    // RFC 9112 §2.2: a server should ignore empty lines received before a request-line.
                    if (request && data[0] is (byte)'\r' or (byte)'\n')
                    {
                        data = data[1..];
                        continue;
                    }
                    sink.MessageStart(request);
                    _s = S.Head;
                    _len = 0;
                    _body = 0;
                    continue;
                case S.Head:
                    data = Head(data);
                    continue;
                case S.Body:
                {
                    int n = (int)Math.Min(_remaining, data.Length);
                    _body += n;
                    _remaining -= n;
                    data = data[n..];
                    if (_remaining == 0)
                    {
                        Done();
                    }
                    continue;
                }
                case S.ChunkSize:
                    data = ChunkSize(data);
                    continue;
                case S.ChunkData:
                {
                    int n = (int)Math.Min(_remaining, data.Length);
                    _body += n;
                    _remaining -= n;
                    data = data[n..];
                    if (_remaining == 0)
                    {
                        _s = S.ChunkCrlf;
                    }
                    continue;
                }
                case S.ChunkCrlf:
                    // The CRLF after chunk-data (§7.1).
                    if (data[0] == (byte)'\r')
                    {
                        data = data[1..];
                        continue;
                    }
                    if (data[0] != (byte)'\n')
                    {
                        Fail("malformed", "no CRLF after chunk data");
                        return;
                    }
                    data = data[1..];
                    _s = S.ChunkSize;
                    _len = 0;
                    continue;
                case S.Trailer:
                    data = Trailer(data);
                    continue;
                case S.UntilClose:
                    _body += data.Length;
                    data = default;
                    continue;
            }
        }
    }

    /// <summary>The stream ended: a body delimited by the close is complete.</summary>
    public void End()
    {
        if (_s == S.UntilClose)
        {
            Done();
        }
    }

    private ReadOnlySpan<byte> Head(ReadOnlySpan<byte> data)
    {
        int before = _len;
        int n = Math.Min(MaxHeaderBytes - _len, data.Length);
        Append(data[..n]);
        int end = FindEnd(Math.Max(0, before - 3));
        if (end < 0)
        {
            if (_len >= MaxHeaderBytes)
            {
                // The request line is still worth recording when it came whole.
                int eol = _buf.AsSpan(0, _len).IndexOf((byte)'\n');
                if (request && eol > 0)
                {
                    ReadRequestLine(TrimCr(_buf.AsSpan(0, eol)));
                }
                Fail("oversized", $"header block over {MaxHeaderBytes} bytes");
            }
            return data[n..];
        }
        ReadOnlySpan<byte> rest = data[(end - before)..];
        _headBytes = end;
        ParseHead(_buf.AsSpan(0, end));
        // A large head's buffer is not kept for the next message.
        if (_buf.Length > 4096)
        {
            _buf = [];
        }
        _len = 0;
        return rest;
    }

    private void Append(ReadOnlySpan<byte> data)
    {
        if (_len + data.Length > _buf.Length)
        {
            int size = Math.Max(256, _buf.Length);
            while (size < _len + data.Length)
            {
                size *= 2;
            }
            Array.Resize(ref _buf, Math.Min(size, MaxHeaderBytes));
        }
        data.CopyTo(_buf.AsSpan(_len));
        _len += data.Length;
    }

    /// <summary>The offset just past the empty line that ends the head (CRLF CRLF, or a bare LF LF, §2.2), else -1.</summary>
    private int FindEnd(int from)
    {
        for (int i = Math.Max(1, from); i < _len; i++)
        {
            if (_buf[i] == (byte)'\n' && (_buf[i - 1] == (byte)'\n' || (_buf[i - 1] == (byte)'\r' && i >= 2 && _buf[i - 2] == (byte)'\n')))
            {
                return i + 1;
            }
        }
        return -1;
    }

    private void ParseHead(ReadOnlySpan<byte> head)
    {
        int eol = head.IndexOf((byte)'\n');
        ReadOnlySpan<byte> first = TrimCr(head[..eol]);
        ReadOnlySpan<byte> fields = head[(eol + 1)..];
        if (request && !ReadRequestLine(first))
        {
            Fail("malformed", "malformed request line");
            return;
        }
        string? host = null;
        long contentLength = -1;
        bool chunked = false;
        bool transferEncoding = false;
        while (!fields.IsEmpty)
        {
            int e = fields.IndexOf((byte)'\n');
            ReadOnlySpan<byte> line = TrimCr(e < 0 ? fields : fields[..e]);
            fields = e < 0 ? default : fields[(e + 1)..];
            if (line.IsEmpty)
            {
                break;
            }
            // §5.1: no whitespace between the name and the colon; §5.2: obsolete line folding is refused.
            int colon = line.IndexOf((byte)':');
            if (colon <= 0 || !IsToken(line[..colon]))
            {
                Fail("malformed", line[0] is (byte)' ' or (byte)'\t' ? "obsolete line folding" : "a header line without a field name");
                return;
            }
            ReadOnlySpan<byte> name = line[..colon];
            ReadOnlySpan<byte> value = line[(colon + 1)..].Trim(" \t"u8);
            if (name.SequenceEqual("Host"u8) || Ascii.EqualsIgnoreCase(name, "host"u8))
            {
                host ??= Text(value, 255);
            }
            else if (Ascii.EqualsIgnoreCase(name, "content-length"u8))
            {
                // §6.3: differing Content-Length values are an unrecoverable error.
                foreach (Range r in new SpanRanges(value))
                {
                    if (!TryDecimal(value[r].Trim(" \t"u8), out long v) || (contentLength >= 0 && v != contentLength))
                    {
                        Fail("malformed", "invalid Content-Length");
                        return;
                    }
                    contentLength = v;
                }
            }
            else if (Ascii.EqualsIgnoreCase(name, "transfer-encoding"u8))
            {
                transferEncoding = true;
                int comma = value.LastIndexOf((byte)',');
                chunked = Ascii.EqualsIgnoreCase(value[(comma + 1)..].Trim(" \t"u8), "chunked"u8);
            }
        }
        if (request)
        {
            sink.RequestHead(host, _headBytes);
            // §6.3: a request with a Transfer-Encoding that is not chunked last cannot be framed (400).
            if (transferEncoding && !chunked)
            {
                Fail("malformed", "Transfer-Encoding without chunked");
                return;
            }
            Framing(chunked, contentLength, untilClose: false);
        }
        else
        {
            StatusLine(first, transferEncoding, chunked, contentLength);
        }
    }

    /// <summary>request-line = method SP request-target SP HTTP-version (§3); false when it is not one.</summary>
    private bool ReadRequestLine(ReadOnlySpan<byte> line)
    {
        int sp1 = line.IndexOf((byte)' ');
        int sp2 = line.LastIndexOf((byte)' ');
        if (sp1 <= 0 || sp2 <= sp1 + 1 || !IsToken(line[..sp1]) || !IsVersion(line[(sp2 + 1)..]) || line[(sp1 + 1)..sp2].IndexOfAny(" \t"u8) >= 0)
        {
            return false;
        }
        sink.RequestLine(Text(line[..sp1], 32)!, Text(line[(sp1 + 1)..sp2], 2048) ?? "", Text(line[(sp2 + 1)..], 16)!);
        return true;
    }

    private void StatusLine(ReadOnlySpan<byte> line, bool transferEncoding, bool chunked, long contentLength)
    {
        // status-line = HTTP-version SP status-code SP [ reason-phrase ] (§4).
        if (line.Length < 12 || !IsVersion(line[..8]) || line[8] != (byte)' ' || !char.IsAsciiDigit((char)line[9]) || !char.IsAsciiDigit((char)line[10])
            || !char.IsAsciiDigit((char)line[11]) || (line.Length > 12 && line[12] != (byte)' '))
        {
            Fail("malformed", "malformed status line");
            return;
        }
        int status = ((line[9] - '0') * 100) + ((line[10] - '0') * 10) + (line[11] - '0');
        string? reason = line.Length > 13 ? Text(line[13..], 128) : null;
        switch (sink.ResponseHead(status, reason, Text(line[..8], 16)!, _headBytes))
        {
            case ResponseKind.Tunnel:
                _s = S.Dead;
                _buf = [];
                return;
            case ResponseKind.Bodyless:
            case ResponseKind.Interim:
                Done();
                return;
        }
        Framing(chunked, contentLength, untilClose: transferEncoding || contentLength < 0);
    }

    private void Framing(bool chunked, long contentLength, bool untilClose)
    {
        if (chunked)
        {
            _s = S.ChunkSize;
            _len = 0;
        }
        else if (untilClose)
        {
            _s = S.UntilClose;
        }
        else if (contentLength > 0)
        {
            _remaining = contentLength;
            _s = S.Body;
        }
        else
        {
            Done();
        }
    }

    private ReadOnlySpan<byte> ChunkSize(ReadOnlySpan<byte> data)
    {
        // chunk-size [ chunk-ext ] CRLF (§7.1); the line is collected (bounded) then read.
        int e = data.IndexOf((byte)'\n');
        ReadOnlySpan<byte> part = e < 0 ? data : data[..e];
        if (_len + part.Length > MaxChunkLine)
        {
            Fail("malformed", "chunk-size line too long");
            return default;
        }
        Append(part);
        if (e < 0)
        {
            return default;
        }
        ReadOnlySpan<byte> line = TrimCr(_buf.AsSpan(0, _len));
        int semi = line.IndexOf((byte)';');
        if (!TryHex(semi < 0 ? line.Trim(" \t"u8) : line[..semi].Trim(" \t"u8), out long size))
        {
            Fail("malformed", "invalid chunk size");
            return default;
        }
        _len = 0;
        if (size == 0)
        {
            _s = S.Trailer;
        }
        else
        {
            _remaining = size;
            _s = S.ChunkData;
        }
        return data[(e + 1)..];
    }

    private ReadOnlySpan<byte> Trailer(ReadOnlySpan<byte> data)
    {
        // trailer-section CRLF (§7.1.2): lines until an empty one; the bound of a head applies.
        while (!data.IsEmpty)
        {
            int e = data.IndexOf((byte)'\n');
            ReadOnlySpan<byte> part = e < 0 ? data : data[..e];
            if (_len + part.Length > MaxHeaderBytes)
            {
                Fail("oversized", "trailer section too large");
                return default;
            }
            Append(part);
            if (e < 0)
            {
                return default;
            }
            data = data[(e + 1)..];
            bool empty = TrimCr(_buf.AsSpan(0, _len)).IsEmpty;
            _len = 0;
            if (empty)
            {
                Done();
                return data;
            }
        }
        return data;
    }

    private void Done()
    {
        sink.MessageDone(request, _body);
        _s = S.Start;
        _len = 0;
        _body = 0;
    }

    private void Fail(string state, string reason)
    {
        _s = S.Dead;
        _buf = [];
        sink.Failed(request, state, reason);
    }

    private static ReadOnlySpan<byte> TrimCr(ReadOnlySpan<byte> s) => !s.IsEmpty && s[^1] == (byte)'\r' ? s[..^1] : s;

    private static bool IsVersion(ReadOnlySpan<byte> v) => v.Length == 8 && v.StartsWith("HTTP/1."u8) && char.IsAsciiDigit((char)v[7]);

    /// <summary>token = 1*tchar (RFC 9110 §5.6.2).</summary>
    internal static bool IsToken(ReadOnlySpan<byte> t)
    {
        if (t.IsEmpty)
        {
            return false;
        }
        foreach (byte c in t)
        {
            if (!(char.IsAsciiLetterOrDigit((char)c) || "!#$%&'*+-.^_`|~"u8.IndexOf(c) >= 0))
            {
                return false;
            }
        }
        return true;
    }

    private static bool TryDecimal(ReadOnlySpan<byte> s, out long v)
    {
        v = 0;
        if (s.IsEmpty || s.Length > 15)
        {
            return false;
        }
        foreach (byte c in s)
        {
            if (!char.IsAsciiDigit((char)c))
            {
                return false;
            }
            v = (v * 10) + (c - '0');
        }
        return true;
    }

    private static bool TryHex(ReadOnlySpan<byte> s, out long v)
    {
        v = 0;
        if (s.IsEmpty || s.Length > 12)
        {
            return false;
        }
        foreach (byte c in s)
        {
            int d = char.IsAsciiDigit((char)c) ? c - '0' : c is >= (byte)'a' and <= (byte)'f' ? c - 'a' + 10 : c is >= (byte)'A' and <= (byte)'F' ? c - 'A' + 10 : -1;
            if (d < 0)
            {
                return false;
            }
            v = (v * 16) + d;
        }
        return true;
    }

    /// <summary>Latin-1 text of at most <paramref name="max"/> characters, control characters shown as '?'.</summary>
    private static string? Text(ReadOnlySpan<byte> b, int max)
    {
        if (b.IsEmpty)
        {
            return null;
        }
        b = b[..Math.Min(b.Length, max)];
        return string.Create(b.Length, b.ToArray(), static (chars, bytes) =>
        {
            for (int i = 0; i < bytes.Length; i++)
            {
                byte c = bytes[i];
                chars[i] = c is < 0x20 or 0x7F ? '?' : (char)c;
            }
        });
    }

    /// <summary>The comma-separated parts of a field value.</summary>
    private readonly ref struct SpanRanges(ReadOnlySpan<byte> s)
    {
        private readonly ReadOnlySpan<byte> _s = s;

        public Enumerator GetEnumerator() => new(_s);

        public ref struct Enumerator(ReadOnlySpan<byte> s)
        {
            private readonly ReadOnlySpan<byte> _s = s;
            private int _start = -1;
            private int _end = -1;

            public Range Current => new(_start, _end);

            public bool MoveNext()
            {
                int from = _end + 1;
                if (from > _s.Length || (_end == _s.Length && _start >= 0))
                {
                    return false;
                }
                int c = _s[from..].IndexOf((byte)',');
                _start = from;
                _end = c < 0 ? _s.Length : from + c;
                return true;
            }
        }
    }
}
