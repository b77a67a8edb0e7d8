using System.Text;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>
/// The upstream proxy configuration (URLs, credentials, curl's NO_PROXY list) and the request-head rewriter the relay
/// uses, as pure functions: good input, and each kind of bad input with its reason.
/// </summary>
public sealed class UpstreamProxyTests
{
    [Fact]
    public void ProxyUrlWithCredentialsBecomesBasicAuthorizationAndNeverPrintsThem()
    {
        ProxyServer p = ProxyServer.Parse("http://alice:s%3Acret@proxy.corp.test:3128/", "--http-proxy");
        Assert.Equal(("proxy.corp.test", 3128), (p.Host, p.Port));
        Assert.Equal("Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes("alice:s:cret")), p.Authorization);
        Assert.Equal("http://proxy.corp.test:3128", p.ToString());
        Assert.DoesNotContain("cret", p.ToString(), StringComparison.Ordinal);

        ProxyServer bare = ProxyServer.Parse("127.0.0.1:8888", "--http-proxy");
        Assert.Equal(("127.0.0.1", 8888, (string?)null, true), (bare.Host, bare.Port, bare.Authorization, bare.OnLoopback));
        Assert.Equal(80, ProxyServer.Parse("http://proxy.test", "x").Port);
    }

    [Theory]
    [InlineData("https://proxy.test:443", "https:// proxies are not supported")]
    [InlineData("socks5://proxy.test:1080", "socks5:// proxies are not supported")]
    [InlineData("ftp://proxy.test", "not a proxy scheme")]
    [InlineData("http://proxy.test:0", "is not a port")]
    [InlineData("http://proxy.test:99999", "is not a port")]
    [InlineData("http://proxy.test/path", "no path")]
    [InlineData("http://:pw@proxy.test", "user name")]
    [InlineData("http://bad host:1", "not a host name")]
    public void BadProxyUrlsAreOneClearError(string url, string expected)
    {
        var e = Assert.Throws<FormatException>(() => ProxyServer.Parse(url, "--http-proxy"));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        Assert.StartsWith("--http-proxy: ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("pw", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void NoProxyFollowsCurl()
    {
        NoProxyList l = NoProxyList.Parse("example.com, .corp.test *.internal.test,10.0.0.0/8 192.168.1.7", "--no-proxy");
        Assert.True(l.Matches("example.com"));
        Assert.True(l.Matches("www.EXAMPLE.com."));
        Assert.False(l.Matches("notexample.com"));
        Assert.True(l.Matches("corp.test"));
        Assert.True(l.Matches("a.b.corp.test"));
        Assert.True(l.Matches("x.internal.test"));
        Assert.True(l.Matches("10.1.2.3"));
        Assert.True(l.Matches(Ip4.Parse("10.255.0.1")));
        Assert.False(l.Matches(Ip4.Parse("11.0.0.1")));
        Assert.True(l.Matches("192.168.1.7"));
        Assert.False(l.Matches("192.168.1.8"));
        Assert.True(NoProxyList.Parse("*", "x").Matches("anything.test"));
        Assert.False(NoProxyList.Empty.Matches("example.com"));
        Assert.Contains("not an IPv4 CIDR", Assert.Throws<FormatException>(() => NoProxyList.Parse("10.0.0.0/40", "--no-proxy")).Message, StringComparison.Ordinal);
        Assert.Contains("not a host name", Assert.Throws<FormatException>(() => NoProxyList.Parse("bad!name", "--no-proxy")).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void EnvironmentTakesLowerCaseFirstThenUpperCase()
    {
        var env = new Dictionary<string, string>
        {
            ["HTTP_PROXY"] = "http://upper.test:1",
            ["https_proxy"] = "http://lower.test:2",
            ["HTTPS_PROXY"] = "http://upper.test:3",
            ["NO_PROXY"] = "skip.test",
        };
        UpstreamProxyOptions o = UpstreamProxyOptions.FromEnvironment(k => env.GetValueOrDefault(k));
        Assert.Equal("http://upper.test:1", o.Http!.ToString());
        Assert.Equal("http://lower.test:2", o.Https!.ToString());
        Assert.True(o.NoProxy.Matches("a.skip.test"));
    }

    [Fact]
    public void RequestHeadIsRewrittenToAbsoluteFormWithTheGatewaysCredentials()
    {
        byte[] head = "\r\nGET /p?q=1 HTTP/1.1\r\nHost: web.test\r\nProxy-Authorization: Basic guest\r\nX-Custom: a b\r\nContent-Length: 5\r\n\r\n"u8.ToArray();
        Assert.True(HttpRequestHead.TryParse(head, out HttpRequestHead r, out string reason), reason);
        Assert.Equal(("GET", "/p?q=1", "web.test", 5L, false), (r.Method, r.Target, r.Host, r.ContentLength, r.Chunked));
        string written = Encoding.Latin1.GetString(r.Write("http://web.test/p?q=1", "Basic gw", toOrigin: false));
        Assert.StartsWith("GET http://web.test/p?q=1 HTTP/1.1\r\nHost: web.test\r\n", written, StringComparison.Ordinal);
        Assert.EndsWith("Proxy-Authorization: Basic gw\r\n\r\n", written, StringComparison.Ordinal);
        Assert.DoesNotContain("Basic guest", written, StringComparison.Ordinal);
        // Without gateway credentials the guest's own pass on to a proxy, and never to an origin.
        Assert.Contains("Basic guest", Encoding.Latin1.GetString(r.Write("http://web.test/", null, toOrigin: false)), StringComparison.Ordinal);
        Assert.DoesNotContain("Proxy-Authorization", Encoding.Latin1.GetString(r.Write("/", null, toOrigin: true)), StringComparison.Ordinal);

        Assert.True(HttpRequestHead.TryParse("GET / HTTP/1.0\n\n"u8, out HttpRequestHead noHost, out _));
        Assert.StartsWith("GET http://198.18.0.1/ HTTP/1.0\r\nHost: 198.18.0.1:80\r\n", Encoding.Latin1.GetString(noHost.Write("http://198.18.0.1/", null, false, "198.18.0.1:80")), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("GET /\r\n\r\n", "malformed request line")]
    [InlineData("GET / HTTP/2.0\r\n\r\n", "malformed request line")]
    [InlineData("G@T / HTTP/1.1\r\n\r\n", "malformed request line")]
    [InlineData("GET / HTTP/1.1\r\nno colon here\r\n\r\n", "without a field name")]
    [InlineData("GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n", "obsolete line folding")]
    [InlineData("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host")]
    [InlineData("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "invalid Content-Length")]
    [InlineData("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", "invalid Content-Length")]
    [InlineData("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "without chunked")]
    [InlineData("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both Content-Length")]
    [InlineData("GET / HTTP/1.1\r\nX: a\u0001b\r\n\r\n", "control character")]
    public void BadRequestHeadsAreRefusedWithAReason(string head, string expected)
    {
        Assert.False(HttpRequestHead.TryParse(Encoding.Latin1.GetBytes(head), out _, out string reason));
        Assert.Contains(expected, reason, StringComparison.Ordinal);
    }

    [Fact]
    public void TargetsAndStatusLines()
    {
        Assert.True(HttpRequestHead.TryParse("GET http://Host.Test:8080?x HTTP/1.1\r\n\r\n"u8, out HttpRequestHead r, out _));
        Assert.True(r.TryGetAbsolute(out string host, out int port, out string path));
        Assert.Equal(("host.test", 8080, "/?x"), (host, port, path));
        Assert.True(HttpRequestHead.TryParse("GET http://user@evil.test/ HTTP/1.1\r\n\r\n"u8, out HttpRequestHead userinfo, out _));
        Assert.False(userinfo.TryGetAbsolute(out _, out _, out _));
        Assert.True(HttpRequestHead.TrySplitAuthority("web.test:443", 80, out host, out port));
        Assert.Equal(("web.test", 443), (host, port));
        Assert.False(HttpRequestHead.TrySplitAuthority("web.test:http", 80, out _, out _));
        Assert.Equal(200, ProxyRelay.StatusOf("HTTP/1.1 200 Connection established\r\n\r\n"u8));
        Assert.Equal(407, ProxyRelay.StatusOf("HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"u8));
        Assert.Equal(0, ProxyRelay.StatusOf("SSH-2.0-x\r\n\r\n"u8));
        Assert.Equal(-1, SocketReader.HeadEnd("GET / HTTP/1.1\r\nA: b\r\n"u8, 0));
        Assert.Equal(16, SocketReader.HeadEnd("GET / HTTP/1.1\n\nrest"u8, 0));
    }
}
