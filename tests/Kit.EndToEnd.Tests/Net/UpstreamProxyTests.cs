using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// Upstream proxies with real clients: Debian's tinyproxy on 127.0.0.1 is the upstream, busybox wget and a Python
/// client run in a `kit net run` namespace. Nothing leaves loopback: names under .test are the guest's (a
/// <c>--dns-record</c> puts web.test at 198.18.0.1, which the gateway must never dial itself), and tinyproxy sends every
/// .test request on to the test's <see cref="OriginProxy"/> on 127.0.0.1 (its <c>Upstream</c> directive), so it never
/// resolves or dials them either. Each test reads tinyproxy's own log.
/// </summary>
[Trait("Tier", "Real")]
public sealed class UpstreamProxyTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);
    private const string Web = "web.test=198.18.0.1";

    public UpstreamProxyTests()
    {
        NetRun.RequirePrerequisites();
        Assert.True(File.Exists("/usr/bin/tinyproxy"), "tinyproxy is missing (./test installs it)");
    }

    [Fact]
    public async Task ExplicitProxyFetchOfTheHostAliasGoesThroughTheUpstreamAndItsLogShowsIt()
    {
        using var origin = new OriginProxy();
        using var proxy = new Tinyproxy(origin.Port);
        string script = $"http_proxy=http://192.168.65.1:3128 timeout 20 busybox wget -q -O - http://host.internal:{origin.Port}/via-alias";
        ProcessResult r = await NetRun.RunAsync(["--http-proxy", $"http://127.0.0.1:{proxy.Port}"], script, Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r) + proxy.Log);
        Assert.Contains("origin saw GET /via-alias", r.StandardOutput, StringComparison.Ordinal);
        // The gateway sent it to tinyproxy as the host's loopback, and tinyproxy fetched it.
        Assert.Contains($"GET http://127.0.0.1:{origin.Port}/via-alias", proxy.Log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task TransparentPort80AndPort443GoThroughTheUpstreamBytesUnchanged()
    {
        using var origin = new OriginProxy();
        using var proxy = new Tinyproxy(origin.Port);
        string dir = Directory.CreateTempSubdirectory("kit-proxy-").FullName;
        string client = Path.Combine(dir, "tls.py");
        await File.WriteAllTextAsync(client, TlsClient, TestContext.Current.CancellationToken);
        try
        {
            string upstream = $"http://127.0.0.1:{proxy.Port}";
            string script = $"timeout 20 busybox wget -q -O - http://web.test/plain; python3 {client} web.test 443";
            ProcessResult r = await NetRun.RunAsync(["--http-proxy", upstream, "--https-proxy", upstream, "--dns-record", Web], script, Timeout);
            string details = NetRun.Describe(r) + "\n--- tinyproxy\n" + proxy.Log + "\n--- origin\n" + string.Join('\n', origin.Seen);
            Assert.True(r.ExitCode == 0, details);
            // Port 80: wget's origin-form request reached the upstream in absolute form.
            Assert.True(System.Text.RegularExpressions.Regex.IsMatch(r.StandardOutput, @"origin saw GET http://web\.test(:80)?/plain"), details);
            Assert.Contains("http://web.test/plain", proxy.Log, StringComparison.Ordinal);
            // Port 443: CONNECT to the ClientHello's server name; it and 256 KiB after it came back unchanged (echoed).
            Assert.True(r.StandardOutput.Contains("OK tls", StringComparison.Ordinal), details);
            Assert.Contains("CONNECT web.test:443", origin.Seen);
            Assert.Contains("web.test", proxy.Log, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task BasicAuthComesFromTheProxyUrlAndWithoutItTheUpstreamSays407()
    {
        using var origin = new OriginProxy();
        using var proxy = new Tinyproxy(origin.Port, basicAuth: ("kit", "s3cret"));
        const string Script = "timeout 20 busybox wget -q -O - http://web.test/auth; echo rc=$?";
        ProcessResult without = await NetRun.RunAsync(["--http-proxy", $"http://127.0.0.1:{proxy.Port}", "--dns-record", Web], Script, Timeout);
        Assert.Contains("407", without.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("origin saw", without.StandardOutput, StringComparison.Ordinal);

        ProcessResult with = await NetRun.RunAsync(["--http-proxy", $"http://kit:s3cret@127.0.0.1:{proxy.Port}", "--dns-record", Web], Script, Timeout);
        Assert.Matches(@"origin saw GET http://web\.test(:80)?/auth", with.StandardOutput);
        Assert.Contains("rc=0", with.StandardOutput, StringComparison.Ordinal);
        // The password is the gateway's secret: never in kit's own output.
        Assert.DoesNotContain("s3cret", with.Output, StringComparison.Ordinal);
        Assert.DoesNotContain("s3cret", without.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AProxyThatIsDownResetsTheGuestAtOnce()
    {
        int nothing = LoopbackPort.Free();
        const string Script = "start=$(date +%s); timeout 20 busybox wget -q -O - http://web.test/x; echo rc=$? took=$(( $(date +%s) - start ))";
        var clock = Stopwatch.StartNew();
        ProcessResult r = await NetRun.RunAsync(["--http-proxy", $"http://127.0.0.1:{nothing}", "--https-proxy", $"http://127.0.0.1:{nothing}", "--dns-record", Web], Script, Timeout);
        Assert.Matches(@"rc=[1-9]\d* took=[0-2]\b", r.StandardOutput);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), NetRun.Describe(r));
    }

    [Fact]
    public async Task HostileRequestsToTheGatewaysProxyGetAClearStatusAndItKeepsServing()
    {
        using var origin = new OriginProxy();
        string dir = Directory.CreateTempSubdirectory("kit-proxy-").FullName;
        string client = Path.Combine(dir, "hostile.py");
        await File.WriteAllTextAsync(client, HostileClient, TestContext.Current.CancellationToken);
        try
        {
            // No upstream: the gateway itself is the proxy and goes direct, the host alias to the host's loopback.
            ProcessResult r = await NetRun.RunAsync([], $"python3 {client} {origin.Port}", Timeout);
            string details = NetRun.Describe(r);
            Assert.True(r.ExitCode == 0, details);
            Assert.Contains("huge: HTTP/1.1 431", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("badline: HTTP/1.1 400", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("relative: HTTP/1.1 400", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("smuggle: HTTP/1.1 400", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("pipelined: 2 answers, /p1 then /p2", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("connect: OK", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("after: origin saw GET /after", r.StandardOutput, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>A real ClientHello for the server name (Python's ssl over a memory BIO), then 256 KiB; the far end echoes them.</summary>
    private const string TlsClient = """
import hashlib, os, socket, ssl, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context()
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, out, server_hostname=host)
try:
    tls.do_handshake()
except ssl.SSLWantReadError:
    pass
data = out.read() + os.urandom(256 * 1024)
s = socket.create_connection((host, port), timeout=20)
# tinyproxy ends a tunnel when either side half-closes, so the far end echoes and nothing is shut down early.
threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
reply = b""
while len(reply) < len(data):
    chunk = s.recv(65536)
    if not chunk:
        break
    reply += chunk
print(("OK tls" if hashlib.sha256(reply).digest() == hashlib.sha256(data).digest() else "BAD tls %d of %d bytes" % (len(reply), len(data))), flush=True)
""";

    /// <summary>Hostile and ordinary requests to 192.168.65.1:3128, each on its own connection; prints what came back.</summary>
    private const string HostileClient = """
import hashlib, socket, sys
port = int(sys.argv[1])
def exchange(data, shut=True):
    s = socket.create_connection(("192.168.65.1", 3128), timeout=20)
    try:
        s.sendall(data)
    except OSError:
        pass
    if shut:
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
    reply = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    except OSError as e:
        reply += b" (" + str(e).encode() + b")"
    s.close()
    return reply
def first(reply):
    return reply.split(b"\r\n")[0].decode(errors="replace")
url = "http://host.internal:%d" % port
print("huge:", first(exchange(b"GET " + url.encode() + b"/huge HTTP/1.1\r\nX-Filler: " + b"a" * (1 << 20) + b"\r\n\r\n")), flush=True)
print("badline:", first(exchange(b"THIS IS NOT HTTP\r\n\r\n")), flush=True)
print("relative:", first(exchange(b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n")), flush=True)
print("smuggle:", first(exchange(b"POST " + url.encode() + b"/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")), flush=True)
two = exchange(("GET %s/p1 HTTP/1.1\r\nHost: h\r\n\r\nGET %s/p2 HTTP/1.1\r\nHost: h\r\n\r\n" % (url, url)).encode())
bodies = [l for l in two.decode(errors="replace").split("\n") if l.startswith("origin saw")]
print("pipelined: %d answers, %s" % (len(bodies), " then ".join(b.split()[-1] for b in bodies)), flush=True)
payload = bytes(range(256)) * 512
tunnel = exchange(("CONNECT host.internal:%d HTTP/1.1\r\nHost: host.internal:%d\r\n\r\n" % (port, port)).encode() + b"DIGEST\n" + payload)
head, _, rest = tunnel.partition(b"\r\n\r\n")
ok = head.startswith(b"HTTP/1.1 200") and rest.decode(errors="replace").strip() == hashlib.sha256(payload).hexdigest()
print("connect:", "OK" if ok else "BAD " + repr(tunnel[:300]), flush=True)
print("after:", exchange(("GET %s/after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % url).encode()).decode(errors="replace").split("\r\n\r\n", 1)[-1].strip(), flush=True)
""";

    /// <summary>tinyproxy on 127.0.0.1 with its config and log in a fresh temp directory; every .test name goes on to <paramref name="originPort"/>.</summary>
    private sealed class Tinyproxy : IDisposable
    {
        private readonly Process _process;
        private readonly string _dir = Directory.CreateTempSubdirectory("kit-tinyproxy-").FullName;

        public Tinyproxy(int originPort, (string User, string Password)? basicAuth = null)
        {
            Port = LoopbackPort.Free();
            string conf = Path.Combine(_dir, "tinyproxy.conf");
            File.WriteAllText(conf, $"""
                User nobody
                Group nogroup
                Port {Port}
                Listen 127.0.0.1
                Timeout 30
                LogFile "{_dir}/tinyproxy.log"
                LogLevel Info
                MaxClients 32
                Allow 127.0.0.1
                ConnectPort 443
                DisableViaHeader Yes
                Upstream http 127.0.0.1:{originPort} ".test"
                {(basicAuth is { } a ? $"BasicAuth {a.User} {a.Password}" : "")}
                """);
            // tinyproxy drops to nobody: it must be able to write its log there.
            File.SetUnixFileMode(_dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.OtherExecute | UnixFileMode.OtherWrite | UnixFileMode.OtherRead);
            _process = Process.Start(new ProcessStartInfo("/usr/bin/tinyproxy", ["-d", "-c", conf]) { RedirectStandardOutput = true, RedirectStandardError = true })!;
            _process.OutputDataReceived += (_, _) => { };
            _process.ErrorDataReceived += (_, _) => { };
            _process.BeginOutputReadLine();
            _process.BeginErrorReadLine();
            for (int i = 0; i < 100; i++)
            {
                try
                {
                    using var probe = new TcpClient();
                    probe.Connect(IPAddress.Loopback, Port);
                    return;
                }
                catch (SocketException)
                {
                    Assert.False(_process.HasExited, $"tinyproxy exited: {Log}");
                    Thread.Sleep(50);
                }
            }
            Assert.Fail($"tinyproxy did not listen on 127.0.0.1:{Port}: {Log}");
        }

        public int Port { get; }

        public string Log
        {
            get
            {
                string path = Path.Combine(_dir, "tinyproxy.log");
                return File.Exists(path) ? File.ReadAllText(path) : "(no log)";
            }
        }

        public void Dispose()
        {
            if (!_process.HasExited)
            {
                _process.Kill();
                _process.WaitForExit(5000);
            }
            _process.Dispose();
            Directory.Delete(_dir, recursive: true);
        }
    }

    /// <summary>
    /// A loopback server that stands in for every origin: it answers each GET (origin or absolute form, keep-alive) with
    /// "origin saw METHOD TARGET", and a CONNECT with 200, then echoes the tunnel's bytes. A stream whose first line is
    /// "DIGEST" (the hostile test's CONNECT to the host alias, which the gateway itself answered) gets the SHA-256 of the
    /// rest once the client has shut down its side.
    /// </summary>
    private sealed class OriginProxy : IDisposable
    {
        private readonly ConcurrentQueue<string> _seen = new();
        private readonly LoopbackTcpServer _server;

        public OriginProxy() => _server = new LoopbackTcpServer(ServeAsync);

        public int Port => _server.Port;

        public IReadOnlyCollection<string> Seen => _seen;

        private async Task ServeAsync(TcpClient c, CancellationToken cancel)
        {
            NetworkStream s = c.GetStream();
            var reader = new StreamReader(s, Encoding.Latin1);
            while (await reader.ReadLineAsync(cancel) is { } line)
            {
                if (line.Length == 0)
                {
                    continue;
                }
                if (line.StartsWith("DIGEST", StringComparison.Ordinal))
                {
                    await DigestAsync(s, reader, cancel);
                    return;
                }
                string[] parts = line.Split(' ');
                string target = parts.Length > 1 ? parts[1] : "";
                _seen.Enqueue($"{parts[0]} {target}");
                while (await reader.ReadLineAsync(cancel) is { Length: > 0 })
                {
                }
                if (parts[0] == "CONNECT")
                {
                    await s.WriteAsync("HTTP/1.1 200 Connection established\r\n\r\n"u8.ToArray(), cancel);
                    await EchoAsync(s, reader, cancel);
                    return;
                }
                byte[] body = Encoding.ASCII.GetBytes($"origin saw {parts[0]} {target}\n");
                await s.WriteAsync(Encoding.ASCII.GetBytes($"HTTP/1.1 200 OK\r\nContent-Length: {body.Length}\r\n\r\n"), cancel);
                await s.WriteAsync(body, cancel);
            }
        }

        /// <summary>The rest of the stream (what the reader holds, then the socket) goes back as it came.</summary>
        private static async Task EchoAsync(NetworkStream s, StreamReader reader, CancellationToken cancel)
        {
            char[] held = new char[65536];
            int n;
            while ((n = await reader.ReadAsync(held, cancel)) > 0)
            {
                await s.WriteAsync(Encoding.Latin1.GetBytes(held, 0, n), cancel);
            }
        }

        /// <summary>The rest of the stream (what the reader holds, then the socket), hashed; the hex digest goes back.</summary>
        private static async Task DigestAsync(NetworkStream s, StreamReader reader, CancellationToken cancel)
        {
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            char[] held = new char[65536];
            int n;
            // StreamReader's Latin-1 chars are the bytes it read ahead.
            while ((n = await reader.ReadAsync(held, cancel)) > 0)
            {
                sha.AppendData(Encoding.Latin1.GetBytes(held, 0, n));
            }
            await s.WriteAsync(Encoding.ASCII.GetBytes(Convert.ToHexStringLower(sha.GetHashAndReset()) + "\n"), cancel);
            s.Socket.Shutdown(SocketShutdown.Send);
        }

        public void Dispose() => _server.Dispose();
    }
}
