using System.Buffers.Binary;
using System.Text;
using CsCheck;
using Kit.VpnKit.Inspect;

namespace Kit.VpnKit.Tests.Inspect;

/// <summary>
/// The inspector's stream tap fed directly, as TcpProxy feeds it (guest bytes after send(2), host bytes after recv(2)):
/// each kind of traffic, including hostile input, is recorded as what it is, memory stays bounded, nothing throws.
/// </summary>
public sealed class StreamTapTests
{
    private const uint Guest = 0xC0A84103; // 192.168.65.3
    private const uint Remote = 0xC0A84102;

    private static (Inspector Inspector, FlowRecord Flow, StreamTap Tap) NewFlow(ushort port = 80)
    {
        var i = new Inspector(new InspectorOptions());
        FlowRecord f = i.OpenFlow("tcp", Guest, 40000, Remote, port);
        return (i, f, i.TapFor(f)!);
    }

    private static byte[] A(string s) => Encoding.ASCII.GetBytes(s);

    [Fact]
    public void RequestAndResponseAreOneCompleteExchange()
    {
        var (i, f, tap) = NewFlow(8080);
        tap.FromGuest(A("GET /kit-page?x=1 HTTP/1.1\r\nHost: myapp.test:8080\r\nUser-Agent: t\r\n\r\n"));
        tap.FromHost(A("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"));
        HttpView x = Assert.Single(i.Exchanges().Select(HttpView.Of));
        Assert.Equal(("GET", "/kit-page?x=1", "myapp.test:8080", 200, "complete"), (x.Method, x.Path, x.Host, x.Status, x.State));
        Assert.Equal(5, x.ResponseBodyBytes);
        Assert.Equal(38, x.ResponseHeaderBytes);
        Assert.NotNull(x.DoneMs);
        Assert.Equal("http", f.App);
        Assert.Equal("myapp.test:8080", f.HttpHost);
    }

    [Fact]
    public void PipelinedRequestsAreMatchedToTheirResponsesInOrder()
    {
        var (i, _, tap) = NewFlow();
        tap.FromGuest(A("GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcHEAD /c HTTP/1.1\r\nHost: h\r\n\r\n"));
        tap.FromHost(A("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"));
        List<HttpView> xs = [.. i.Exchanges().Select(HttpView.Of)];
        Assert.Equal(["/a 200 3", "/b 201 2", "/c 200 0"], xs.Select(x => $"{x.Path} {x.Status} {x.ResponseBodyBytes}"));
        Assert.All(xs, x => Assert.Equal("complete", x.State));
        Assert.Equal(3, xs[1].RequestBodyBytes);
    }

    [Fact]
    public void ByteAtATimeGivesTheSameRecord()
    {
        var (i, _, tap) = NewFlow();
        foreach (byte b in A("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"))
        {
            tap.FromGuest([b]);
        }
        foreach (byte b in A("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=1\r\nno\r\n0\r\nX-Trailer: 1\r\n\r\n"))
        {
            tap.FromHost([b]);
        }
        HttpView x = Assert.Single(i.Exchanges().Select(HttpView.Of));
        Assert.Equal(("/slow", 404, "Not Found", 2L, "complete"), (x.Path, x.Status, x.Reason, x.ResponseBodyBytes, x.State));
    }

    [Theory]
    [InlineData("GET /x HTTP/1.1\r\nNo colon here\r\n\r\n", "a header line without a field name")]
    [InlineData("GET /x HTTP/1.1\r\nHost : h\r\n\r\n", "a header line without a field name")]
    [InlineData("GET /x HTTP/1.1\r\nHost: h\r\n folded\r\n\r\n", "obsolete line folding")]
    [InlineData("GET /x\r\n\r\n", "malformed request line")]
    [InlineData("GET /x HTTP/2.0\r\n\r\n", "malformed request line")]
    [InlineData("POST /x HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "invalid Content-Length")]
    [InlineData("POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length")]
    [InlineData("POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding without chunked")]
    [InlineData("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size")]
    public void MalformedRequestsAreRecordedAsMalformed(string request, string reason)
    {
        var (i, f, tap) = NewFlow();
        tap.FromGuest(A(request));
        tap.FromHost(A("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"));
        tap.FromGuest(A("GET /after HTTP/1.1\r\n\r\n"));
        HttpView x = Assert.Single(i.Exchanges().Select(HttpView.Of));
        Assert.Equal("malformed", x.State);
        Assert.Equal(reason, x.Note);
        Assert.Equal(reason == "malformed request line" ? "" : "/x", x.Path);
        Assert.Contains(reason, f.Note);
        Assert.Equal(0, i.Faults);
    }

    [Fact]
    public void MalformedResponseIsRecorded()
    {
        var (i, _, tap) = NewFlow();
        tap.FromGuest(A("GET / HTTP/1.1\r\n\r\n"));
        tap.FromHost(A("HTTP/1.1 2xx Weird\r\n\r\n"));
        HttpView x = Assert.Single(i.Exchanges().Select(HttpView.Of));
        Assert.Equal(("malformed", "malformed status line"), (x.State, x.Note));
    }

    [Fact]
    public void AMebibyteOfHeadersIsOversizedAndMemoryStaysUnderTheCap()
    {
        var (i, f, tap) = NewFlow();
        tap.FromGuest(A("GET /big HTTP/1.1\r\nHost: h\r\n"));
        byte[] line = A("X-Filler: " + new string('a', 1000) + "\r\n");
        int maxHeld = 0;
        for (int sent = 0; sent < 1 << 20; sent += line.Length)
        {
            tap.FromGuest(line);
            maxHeld = Math.Max(maxHeld, tap.Buffered);
        }
        tap.FromGuest(A("\r\n"));
        HttpView x = Assert.Single(i.Exchanges().Select(HttpView.Of));
        Assert.Equal(("oversized", "GET", "/big"), (x.State, x.Method, x.Path));
        Assert.Contains("header block over", f.Note);
        Assert.True(maxHeld <= 32 * 1024 + 64, $"held {maxHeld} bytes");
        Assert.Equal(0, tap.Buffered);
    }

    [Theory]
    [InlineData("SSH-2.0-OpenSSH_9.2\r\n")]
    [InlineData("\u0000\u0001\u0002binary")]
    [InlineData("get / http/1.1\r\n\r\n")]
    [InlineData("HELLOWORLDHELLOWORLD and more")]
    public void NonHttpOnPort80IsOther(string first)
    {
        var (i, f, tap) = NewFlow(80);
        tap.FromGuest(A(first));
        tap.FromGuest(A("GET / HTTP/1.1\r\n\r\n"));
        Assert.Equal("other", f.App);
        Assert.Empty(i.Exchanges());
    }

    [Fact]
    public void ServerFirstProtocolIsOther()
    {
        var (i, f, tap) = NewFlow(25);
        tap.FromHost(A("220 mail ESMTP\r\n"));
        tap.FromGuest(A("GET / HTTP/1.1\r\n\r\n"));
        Assert.Equal("other", f.App);
        Assert.Empty(i.Exchanges());
    }

    [Fact]
    public void UpgradeStopsParsingAndCountsTheExchange()
    {
        var (i, f, tap) = NewFlow();
        tap.FromGuest(A("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"));
        tap.FromHost(A("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\u0081\u0005hello"));
        tap.FromGuest(A("\u0081\u0085garbage"));
        HttpView x = Assert.Single(i.Exchanges().Select(HttpView.Of));
        Assert.Equal((101, "complete"), (x.Status, x.State));
        Assert.Equal("switched protocols", f.Note);
    }

    [Fact]
    public void ResponseUntilCloseCompletesWhenTheFlowEnds()
    {
        var (i, _, tap) = NewFlow();
        tap.FromGuest(A("GET / HTTP/1.0\r\n\r\n"));
        tap.FromHost(A("HTTP/1.0 200 OK\r\n\r\n0123456789"));
        Assert.Equal("pending", HttpView.Of(i.Exchanges()[0]).State);
        tap.Closed();
        HttpView x = HttpView.Of(i.Exchanges()[0]);
        Assert.Equal(("complete", 10L), (x.State, x.ResponseBodyBytes));
    }

    /// <summary>A ClientHello (RFC 8446 §4.1.2) with the given extensions, in one handshake record.</summary>
    internal static byte[] ClientHello(params (ushort Type, byte[] Data)[] extensions)
    {
        var ext = new List<byte>();
        foreach (var (type, data) in extensions)
        {
            ext.AddRange([(byte)(type >> 8), (byte)type, (byte)(data.Length >> 8), (byte)data.Length, .. data]);
        }
        var body = new List<byte> { 3, 3 };
        body.AddRange(new byte[32]);
        body.Add(0); // session id
        body.AddRange([0, 2, 0x13, 0x01]); // one cipher suite
        body.AddRange([1, 0]); // null compression
        body.AddRange([(byte)(ext.Count >> 8), (byte)ext.Count, .. ext]);
        var hs = new List<byte> { 1, (byte)(body.Count >> 16), (byte)(body.Count >> 8), (byte)body.Count };
        hs.AddRange(body);
        return [0x16, 3, 1, (byte)(hs.Count >> 8), (byte)hs.Count, .. hs];
    }

    internal static byte[] Sni(string name)
    {
        byte[] n = Encoding.ASCII.GetBytes(name);
        int list = 3 + n.Length;
        return [(byte)(list >> 8), (byte)list, 0, (byte)(n.Length >> 8), (byte)n.Length, .. n];
    }

    internal static byte[] Alpn(params string[] protocols)
    {
        var l = new List<byte>();
        foreach (string p in protocols)
        {
            l.Add((byte)p.Length);
            l.AddRange(Encoding.ASCII.GetBytes(p));
        }
        return [(byte)(l.Count >> 8), (byte)l.Count, .. l];
    }

    [Fact]
    public void TlsClientHelloGivesSniAndAlpn()
    {
        var (i, f, tap) = NewFlow(443);
        byte[] hello = ClientHello((0xFAFA, []), (0, Sni("api.example.test")), (16, Alpn("h2", "http/1.1")), (43, [2, 3, 4]));
        // Split across calls, as TCP may deliver it.
        tap.FromGuest(hello.AsSpan(0, 3));
        tap.FromGuest(hello.AsSpan(3, 40));
        tap.FromGuest(hello.AsSpan(43));
        Assert.Equal(("tls", "api.example.test", "h2,http/1.1", null), (f.App, f.Sni, f.Alpn, f.Note));
        Assert.Empty(i.Exchanges());
        Assert.Equal(0, tap.Buffered);
    }

    [Fact]
    public void TlsClientHelloSplitOverTwoRecordsIsJoined()
    {
        var (_, f, tap) = NewFlow(443);
        byte[] hello = ClientHello((0, Sni("two.records.test")));
        byte[] payload = hello[5..];
        byte[] first = [0x16, 3, 1, 0, 20, .. payload[..20]];
        int rest = payload.Length - 20;
        byte[] second = [0x16, 3, 1, (byte)(rest >> 8), (byte)rest, .. payload[20..]];
        tap.FromGuest([.. first, .. second]);
        Assert.Equal("two.records.test", f.Sni);
    }

    [Fact]
    public void TlsClientHelloWithGarbageExtensionsIsMalformedNotThrown()
    {
        var (i, f, tap) = NewFlow(443);
        byte[] hello = ClientHello((0, Sni("before.garbage.test")), (0x1234, new byte[40]));
        // The last extension claims more bytes than the hello holds.
        int lenAt = hello.Length - 40 - 2;
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(lenAt), 0xFFF0);
        tap.FromGuest(hello);
        Assert.Equal("tls", f.App);
        Assert.StartsWith("malformed ClientHello", f.Note);
        Assert.Equal(0, i.Faults);
    }

    [Fact]
    public void ArbitraryStreamsNeverThrowAndStayBounded()
    {
        Gen.Select(Gen.Byte.Array[0, 3000].Array[1, 6], Gen.Byte.Array[0, 3000].Array[0, 4], Gen.Int[0, 3]).Sample((guest, host, prefix) =>
        {
            var (i, _, tap) = NewFlow();
            byte[] start = prefix switch
            {
                0 => A("GET / HTTP/1.1\r\n"),
                1 => [0x16, 3, 1],
                2 => A("POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
                _ => [],
            };
            tap.FromGuest(start);
            for (int k = 0; k < Math.Max(guest.Length, host.Length); k++)
            {
                if (k < guest.Length)
                {
                    tap.FromGuest(guest[k]);
                }
                if (k < host.Length)
                {
                    tap.FromHost(host[k]);
                }
                if (tap.Buffered > 40 * 1024)
                {
                    return false;
                }
            }
            tap.Closed();
            return i.Faults == 0;
        }, iter: 2000);
    }
}
