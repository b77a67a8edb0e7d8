using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// `kit net run --ui tcp://127.0.0.1:PORT` with real clients: busybox nslookup and wget in the namespace, and a Python
/// client sending hostile streams (a mebibyte of headers, malformed HTTP, pipelined requests, non-HTTP, a ClientHello
/// with garbage extensions) to a server on the host's loopback that answers each with the SHA-256 of what it got. The
/// test reads the API while the namespace's command still runs (it waits for a file the test creates), then lets it end.
/// </summary>
[Trait("Tier", "Real")]
public sealed class InspectorUiTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    public InspectorUiTests() => NetRun.RequirePrerequisites();

    /// <summary>Each case on its own connection: send, shut down the sending side, read the server's digest, compare.</summary>
    private const string Client = """
import hashlib, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
hello = bytearray([3, 3]) + bytes(32) + bytes([0, 0, 2, 0x13, 1, 1, 0])
sni = b"hostile.test"
ext = bytes([0, 0, 0, len(sni) + 5, 0, len(sni) + 3, 0, 0, len(sni)]) + sni + bytes([0x12, 0x34, 0xff, 0xf0]) + bytes(40)
hello += len(ext).to_bytes(2, "big") + ext
hs = bytes([1]) + len(hello).to_bytes(3, "big") + hello
cases = {
    "huge": b"GET /huge HTTP/1.1\r\nHost: hostile.test\r\n" + b"X-Filler: " + b"a" * (1 << 20) + b"\r\n\r\n",
    "malformed": b"GET /malformed HTTP/1.1\r\nthis is not a header\r\n\r\n",
    "pipelined": b"GET /p1 HTTP/1.1\r\nHost: h\r\n\r\nGET /p2 HTTP/1.1\r\nHost: h\r\n\r\n",
    "nonhttp": b"\x00\x01\x02 not http at all " * 100,
    "tls": bytes([0x16, 3, 1]) + len(hs).to_bytes(2, "big") + hs,
}
for name, data in cases.items():
    s = socket.create_connection((host, port), timeout=20)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    reply = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        reply += chunk
    s.close()
    print(("OK " if reply.decode().strip() == hashlib.sha256(data).hexdigest() else "BAD ") + name, flush=True)
""";

    [Fact]
    public async Task ApiShowsFlowsDnsHttpAndHarWhileTheCommandRuns()
    {
        using var http = new TinyHttpServer();
        using var dns = new TinyDnsServer();
        using var digest = new DigestServer();
        int ui = LoopbackPort.Free();
        string dir = Directory.CreateTempSubdirectory("kit-inspect-").FullName;
        string client = Path.Combine(dir, "client.py");
        string ready = Path.Combine(dir, "ready");
        string go = Path.Combine(dir, "go");
        await File.WriteAllTextAsync(client, Client, TestContext.Current.CancellationToken);
        try
        {
            string script = $"busybox nslookup {TinyDnsServer.Name}; timeout 20 busybox wget -q -O - http://192.168.65.2:{http.Port}{TinyHttpServer.Path} | md5sum; "
                + $"python3 {client} 192.168.65.2 {digest.Port}; touch {ready}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";
            Task<ProcessResult> run = NetRun.RunAsync(["--ui", $"tcp://127.0.0.1:{ui}", "--dns-upstream", $"127.0.0.1:{dns.EndPoint.Port}"], script, Timeout);
            for (int i = 0; i < 600 && !File.Exists(ready) && !run.IsCompleted; i++)
            {
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
            Assert.True(File.Exists(ready), run.IsCompleted ? NetRun.Describe(await run) : "the namespace's command did not get ready in 60 s");

            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(10) };
            // Flow ends and the last exchanges are recorded as the gateway sees the closes: a moment after the client.
            JsonElement flows = default, exchanges = default;
            for (int i = 0; i < 50; i++)
            {
                flows = await GetAsync(api, "/api/flows");
                exchanges = await GetAsync(api, "/api/http");
                if (exchanges.EnumerateArray().Any(x => x.GetProperty("path").GetString() == "/p2" && x.GetProperty("state").GetString() != "pending"))
                {
                    break;
                }
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
            string page = await api.GetStringAsync("/", TestContext.Current.CancellationToken);
            JsonElement dnsLog = await GetAsync(api, "/api/dns");
            JsonElement har = await GetAsync(api, "/api/http.har");
            // A DNS-rebinding page reaches the same socket under a name of its own: refused (docs/security.md).
            using var rebound = new HttpRequestMessage(HttpMethod.Get, "/api/flows");
            rebound.Headers.Host = $"rebind.example:{ui}";
            using HttpResponseMessage refused = await api.SendAsync(rebound, TestContext.Current.CancellationToken);
            Assert.Equal(System.Net.HttpStatusCode.MisdirectedRequest, refused.StatusCode);
            ProcessResult flowsCli = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["net", "flows", "--api", $"http://127.0.0.1:{ui}", "--json"], TimeSpan.FromSeconds(30), cancellationToken: TestContext.Current.CancellationToken);
            ProcessResult table = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["net", "flows", "--api", $"http://127.0.0.1:{ui}"], TimeSpan.FromSeconds(30), cancellationToken: TestContext.Current.CancellationToken);
            File.WriteAllText(go, "");
            ProcessResult r = await run;
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            string details = $"{NetRun.Describe(r)}\n--- flows\n{flows}\n--- http\n{exchanges}\n--- dns\n{dnsLog}";

            // The byte streams arrived unchanged both ways: the page's digest, and the hostile streams' on both ends.
            Assert.Contains(http.Md5, r.StandardOutput);
            foreach (string name in (string[])["huge", "malformed", "pipelined", "nonhttp", "tls"])
            {
                Assert.True(r.StandardOutput.Contains($"OK {name}", StringComparison.Ordinal), $"{name}\n{details}");
            }
            Assert.Equal(5, digest.Served);

            // HTTP: wget's request with its path and 200; each hostile stream recorded as what it is.
            JsonElement page200 = exchanges.EnumerateArray().Single(x => x.GetProperty("path").GetString() == TinyHttpServer.Path);
            Assert.Equal(("GET", 200, "complete"), (page200.GetProperty("method").GetString(), page200.GetProperty("status").GetInt32(), page200.GetProperty("state").GetString()));
            Assert.Equal(http.Body.Length, page200.GetProperty("responseBodyBytes").GetInt64());
            Assert.Equal("oversized", State(exchanges, "/huge"));
            Assert.Equal("malformed", State(exchanges, "/malformed"));
            Assert.Contains(exchanges.EnumerateArray(), x => x.GetProperty("path").GetString() == "/p1");
            Assert.Contains(exchanges.EnumerateArray(), x => x.GetProperty("path").GetString() == "/p2");

            // DNS: the query and its answer from the test's upstream.
            JsonElement q = dnsLog.EnumerateArray().First(d => d.GetProperty("name").GetString() == TinyDnsServer.Name && d.GetProperty("type").GetString() == "A");
            Assert.Contains(TinyDnsServer.Address.ToString(), q.GetProperty("answer").GetString());
            Assert.Equal($"127.0.0.1:{dns.EndPoint.Port}", q.GetProperty("source").GetString());

            // Flows: wget's TCP flow with bytes both ways; the non-HTTP and TLS streams as "other" and "tls" with the SNI.
            JsonElement wget = flows.EnumerateArray().Single(f => f.GetProperty("remotePort").GetInt32() == http.Port);
            Assert.Equal(("tcp", "192.168.65.2", "http"), (wget.GetProperty("proto").GetString(), wget.GetProperty("remote").GetString(), wget.GetProperty("app").GetString()));
            Assert.True(wget.GetProperty("bytesOut").GetInt64() > 0 && wget.GetProperty("bytesIn").GetInt64() >= http.Body.Length, details);
            Assert.True(wget.GetProperty("packetsOut").GetInt64() > 0 && wget.GetProperty("packetsIn").GetInt64() > 0, details);
            JsonElement[] toDigest = [.. flows.EnumerateArray().Where(f => f.GetProperty("remotePort").GetInt32() == digest.Port)];
            Assert.Equal(5, toDigest.Length);
            Assert.Contains(toDigest, f => f.GetProperty("app").GetString() == "other");
            JsonElement tls = toDigest.Single(f => f.GetProperty("app").GetString() == "tls");
            Assert.Equal("hostile.test", tls.GetProperty("sni").GetString());
            Assert.StartsWith("malformed ClientHello", tls.GetProperty("note").GetString());
            Assert.True(toDigest.Single(f => f.GetProperty("app").GetString() == "other").GetProperty("bytesOut").GetInt64() == 2000, details);

            // HAR 1.2 parses and has the entry.
            Assert.Equal("1.2", har.GetProperty("log").GetProperty("version").GetString());
            Assert.Contains(har.GetProperty("log").GetProperty("entries").EnumerateArray(),
                e => e.GetProperty("request").GetProperty("url").GetString() == $"http://192.168.65.2:{http.Port}{TinyHttpServer.Path}"
                    && e.GetProperty("response").GetProperty("status").GetInt32() == 200);

            // The page is self-contained; kit net flows reads the same API.
            Assert.Contains("<script>", page);
            Assert.DoesNotContain("src=\"http", page);
            Assert.True(flowsCli.ExitCode == 0, flowsCli.ToString());
            using (JsonDocument cli = JsonDocument.Parse(flowsCli.StandardOutput))
            {
                Assert.Contains(cli.RootElement.EnumerateArray(), f => f.GetProperty("remotePort").GetInt32() == http.Port);
            }
            Assert.True(table.ExitCode == 0, table.ToString());
            Assert.Contains($"192.168.65.2:{http.Port}", table.StandardOutput);
        }
        finally
        {
            File.WriteAllText(go, "");
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task UiOnANonLoopbackAddressIsRefused()
    {
        ProcessResult r = await NetRun.RunAsync(["--ui", "tcp://0.0.0.0:1"], "true", Timeout);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("not a loopback address", r.StandardError);
    }

    private static string? State(JsonElement exchanges, string path) =>
        exchanges.EnumerateArray().Single(x => x.GetProperty("path").GetString() == path).GetProperty("state").GetString();

    private static async Task<JsonElement> GetAsync(HttpClient api, string path)
    {
        string text = await api.GetStringAsync(path, TestContext.Current.CancellationToken);
        using JsonDocument doc = JsonDocument.Parse(text);
        return doc.RootElement.Clone();
    }

    /// <summary>Reads each connection to its end and answers with the SHA-256 (hex) of what it received.</summary>
    private sealed class DigestServer : IDisposable
    {
        private readonly LoopbackTcpServer _server;
        private int _served;

        public DigestServer() => _server = new LoopbackTcpServer(HandleAsync);

        public int Port => _server.Port;

        public int Served => Volatile.Read(ref _served);

        private async Task HandleAsync(TcpClient c, CancellationToken cancel)
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            NetworkStream s = c.GetStream();
            byte[] buffer = new byte[65536];
            int n;
            while ((n = await s.ReadAsync(buffer, cancel)) > 0)
            {
                sha.AppendData(buffer, 0, n);
            }
            await s.WriteAsync(System.Text.Encoding.ASCII.GetBytes(Convert.ToHexStringLower(sha.GetHashAndReset()) + "\n"), cancel);
            Interlocked.Increment(ref _served);
        }

        public void Dispose() => _server.Dispose();
    }
}
