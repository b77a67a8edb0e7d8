using System.Diagnostics;

namespace Kit.VpnKit.Inspect;

/// <summary>
/// The inspector's view of one TCP stream, fed the bytes the NAT has just moved (guest → host after send(2) took
/// them, host → guest after recv(2) gave them): read-only spans, never kept beyond the bounded buffers of the parsers.
/// The guest's first bytes say what the stream speaks: a TLS handshake record (its ClientHello's SNI and ALPN are
/// read, then nothing more), an HTTP/1.x request line on any port (requests and responses are framed and counted),
/// or anything else (nothing more is looked at). Every entry point catches: a fault in a parser ends the observation
/// of this stream and is counted (<see cref="Inspector.Faults"/>); the bytes have already moved.
/// </summary>
public sealed class StreamTap : IHttpSink
{
    private enum Mode
    {
        Sniff,
        Http,
        Tls,
        Off,
    }

    /// <summary>Requests awaiting their response (pipelining, RFC 9112 §9.3.2); beyond this the stream is not followed.</summary>
    private const int MaxPending = 64;
    private const int SniffBytes = 16;

    private readonly Inspector _inspector;
    private readonly FlowRecord _flow;
    private Mode _mode;
    private byte[]? _head;
    private int _headLen;
    private HttpParser? _requests;
    private HttpParser? _responses;
    private readonly Queue<HttpExchange> _pending = new();
    private HttpExchange? _current;
    private int _exchanges;

    internal StreamTap(Inspector inspector, FlowRecord flow)
    {
        _inspector = inspector;
        _flow = flow;
    }

    /// <summary>Bytes held by this tap's parsers (for the memory bound's tests).</summary>
    public int Buffered => (_head?.Length ?? 0) + (_requests?.Buffered ?? 0) + (_responses?.Buffered ?? 0);

    /// <summary>Bytes the guest sent that the host socket took.</summary>
    public void FromGuest(ReadOnlySpan<byte> data)
    {
        if (_mode == Mode.Off || data.IsEmpty)
        {
            return;
        }
        try
        {
            switch (_mode)
            {
                case Mode.Sniff:
                    Sniff(data);
                    break;
                case Mode.Http:
                    _requests!.Feed(data);
                    break;
                case Mode.Tls:
                    Tls(data);
                    break;
            }
        }
        catch (Exception)
        {
            Stop();
            _inspector.Fault();
        }
    }

    /// <summary>Bytes the host sent that went into the guest's send buffer.</summary>
    public void FromHost(ReadOnlySpan<byte> data)
    {
        if (_mode == Mode.Off || data.IsEmpty)
        {
            return;
        }
        try
        {
            if (_mode == Mode.Sniff && _headLen == 0)
            {
                // The server spoke first (SSH, SMTP banners): neither HTTP nor TLS, whose clients speak first.
                _flow.App = "other";
                Stop();
                return;
            }
            if (_mode == Mode.Http)
            {
                _responses!.Feed(data);
            }
        }
        catch (Exception)
        {
            Stop();
            _inspector.Fault();
        }
    }

    /// <summary>The flow ended: a response delimited by the close is complete; anything else pending is incomplete.</summary>
    public void Closed()
    {
        try
        {
            _responses?.End();
            while (_pending.TryDequeue(out HttpExchange? x))
            {
                if (x.State == "pending")
                {
                    x.State = "incomplete";
                    _inspector.ExchangeDone(x);
                }
            }
            if (_current is { State: "pending" })
            {
                _current.State = "incomplete";
                _inspector.ExchangeDone(_current);
            }
        }
        catch (Exception)
        {
            _inspector.Fault();
        }
        Stop();
    }

    private void Sniff(ReadOnlySpan<byte> data)
    {
        _head ??= new byte[SniffBytes];
        int before = _headLen;
        int n = Math.Min(SniffBytes - before, data.Length);
        if (n > 0)
        {
            data[..n].CopyTo(_head.AsSpan(before));
            _headLen += n;
        }
        ReadOnlySpan<byte> h = _head.AsSpan(0, _headLen);
        if (h[0] == 0x16)
        {
            if (h.Length < 2)
            {
                return;
            }
            if (h[1] == 3)
            {
                _mode = Mode.Tls;
                // Room for a whole ClientHello (bounded), with the bytes of earlier calls kept.
                Array.Resize(ref _head, TlsClientHello.MaxHello + 5);
                _headLen = before;
                Tls(data);
                return;
            }
            Other();
            return;
        }
        // An HTTP/1.x request starts with a method token and a space (RFC 9112 §3); methods are upper-case in practice.
        int i = 0;
        while (i < h.Length && h[i] is >= (byte)'A' and <= (byte)'Z')
        {
            i++;
        }
        if (i == h.Length)
        {
            if (h.Length >= SniffBytes)
            {
                Other();
            }
            return;
        }
        if (i == 0 || h[i] != (byte)' ')
        {
            Other();
            return;
        }
        _mode = Mode.Http;
        _flow.App = "http";
        _requests = new HttpParser(request: true, this);
        _responses = new HttpParser(request: false, this);
        byte[] earlier = _head.AsSpan(0, before).ToArray();
        _head = null;
        _headLen = 0;
        _requests.Feed(earlier);
        _requests.Feed(data);
    }

    private void Other()
    {
        _flow.App = "other";
        Stop();
    }

    private void Tls(ReadOnlySpan<byte> data)
    {
        int n = Math.Min(_head!.Length - _headLen, data.Length);
        data[..n].CopyTo(_head.AsSpan(_headLen));
        _headLen += n;
        _flow.App = "tls";
        switch (TlsClientHello.Parse(_head.AsSpan(0, _headLen), out string? sni, out string? alpn, out string? error))
        {
            case TlsClientHello.Result.NeedMore:
                if (_headLen == _head.Length)
                {
                    _flow.Note = "ClientHello too large";
                    Stop();
                }
                return;
            case TlsClientHello.Result.Done:
                _flow.Sni = sni;
                _flow.Alpn = alpn;
                break;
            default:
                _flow.Sni = sni;
                _flow.Note = "malformed ClientHello: " + error;
                break;
        }
        // The rest is encrypted.
        Stop();
    }

    private void Stop()
    {
        _mode = Mode.Off;
        _head = null;
        _requests = null;
        _responses = null;
    }

    void IHttpSink.MessageStart(bool request)
    {
        if (_mode == Mode.Off)
        {
            return;
        }
        long now = Stopwatch.GetTimestamp();
        if (request)
        {
            if (_pending.Count >= MaxPending)
            {
                _flow.Note = "more than " + MaxPending + " requests without a response";
                Stop();
                return;
            }
            _current = _inspector.NewExchange(_flow);
            if (_exchanges++ == 0 && _flow.ConnectedTicks != 0)
            {
                _current.ConnectMs = Inspector.ElapsedMs(_flow.StartTicks, _flow.ConnectedTicks);
            }
        }
        else if (_pending.TryPeek(out HttpExchange? x) && x.FirstByteTicks == 0)
        {
            x.FirstByteTicks = now;
        }
    }

    void IHttpSink.RequestLine(string method, string target, string version)
    {
        if (_mode == Mode.Off || _current is not { } x)
        {
            return;
        }
        x.Method = method;
        x.Target = target;
        x.Version = version;
    }

    void IHttpSink.RequestHead(string? host, long headerBytes)
    {
        if (_mode == Mode.Off || _current is not { } x)
        {
            return;
        }
        x.Host = host;
        x.RequestHeaderBytes = headerBytes;
        _flow.HttpHost ??= host;
        _pending.Enqueue(x);
    }

    ResponseKind IHttpSink.ResponseHead(int status, string? reason, string version, long headerBytes)
    {
        if (_mode == Mode.Off)
        {
            return ResponseKind.Tunnel;
        }
        if (!_pending.TryPeek(out HttpExchange? x))
        {
            _flow.Note = "a response without a request";
            Stop();
            return ResponseKind.Tunnel;
        }
        if (status is >= 100 and < 200 && status != 101)
        {
            // 100 Continue and friends (RFC 9110 §15.2): the final response follows.
            x.ResponseHeaderBytes += headerBytes;
            return ResponseKind.Interim;
        }
        x.Status = status;
        x.Reason = reason;
        x.ResponseHeaderBytes += headerBytes;
        if (status == 101 || (x.Method == "CONNECT" && status is >= 200 and < 300))
        {
            Finish(x, 0);
            _flow.Note = status == 101 ? "switched protocols" : "CONNECT tunnel";
            Stop();
            return ResponseKind.Tunnel;
        }
        return x.Method == "HEAD" || status is 204 or 304 ? ResponseKind.Bodyless : ResponseKind.Framed;
    }

    void IHttpSink.MessageDone(bool request, long bodyBytes)
    {
        if (_mode == Mode.Off)
        {
            return;
        }
        long now = Stopwatch.GetTimestamp();
        if (request)
        {
            if (_current is { } x)
            {
                x.RequestBodyBytes = bodyBytes;
                x.RequestDoneTicks = now;
                _current = null;
            }
            return;
        }
        if (_pending.TryPeek(out HttpExchange? head) && head.Status != 0)
        {
            _pending.Dequeue();
            Finish(head, bodyBytes);
        }
    }

    private void Finish(HttpExchange x, long bodyBytes)
    {
        x.ResponseBodyBytes = bodyBytes;
        x.DoneTicks = Stopwatch.GetTimestamp();
        if (x.FirstByteTicks == 0)
        {
            x.FirstByteTicks = x.DoneTicks;
        }
        x.State = "complete";
        _inspector.ExchangeDone(x);
    }

    void IHttpSink.Failed(bool request, string state, string reason)
    {
        if (_mode == Mode.Off)
        {
            return;
        }
        HttpExchange? x = request ? _current : _pending.TryPeek(out HttpExchange? p) ? p : null;
        if (x is null && request)
        {
            x = _inspector.NewExchange(_flow);
        }
        if (x is not null)
        {
            x.State = state;
            x.Note = reason;
            _inspector.ExchangeDone(x);
        }
        _flow.Note = (request ? "request: " : "response: ") + reason;
        // The stream can no longer be framed in either direction.
        Stop();
    }
}
