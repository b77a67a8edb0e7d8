using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// Policy rules and impairment (issue 17, items 3 and 4) under `kit net run --policy FILE` with real clients in the
/// namespace: busybox wget, iperf3 and Python sockets. Names come from `--dns-record` (answered at the gateway; the
/// upstream is a server this test runs on loopback), so every connection goes to the host alias 192.168.65.2, which is
/// the host's 127.0.0.1, where this test's servers listen.
/// </summary>
[Trait("Tier", "Real")]
public sealed partial class PolicyTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-policy-").FullName;

    public PolicyTests() => NetRun.RequirePrerequisites();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Runs a command, prints "LABEL rc=N ms=M" (its exit code and wall time).</summary>
    private const string Timer = """
import subprocess, sys, time
t = time.monotonic()
r = subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print("%s rc=%d ms=%d" % (sys.argv[1], r.returncode, (time.monotonic() - t) * 1000), flush=True)
""";

    /// <summary>GET over one connection, reads until the end or a reset: "LABEL bytes=N end=eof|reset".</summary>
    private const string Reader = """
import socket, sys
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=20)
s.sendall(b"GET /kit-page HTTP/1.0\r\nHost: cut.test\r\n\r\n")
n, end = 0, "eof"
try:
    while True:
        c = s.recv(65536)
        if not c:
            break
        n += len(c)
except ConnectionResetError:
    end = "reset"
print("%s bytes=%d end=%s" % (sys.argv[1], n, end), flush=True)
""";

    /// <summary>A real TLS ClientHello (Python's ssl) naming SNI: "LABEL reset" when the gateway reset the flow, else what ended it.</summary>
    private const string Tls = """
import socket, ssl, sys
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=2)
ctx = ssl.create_default_context()
try:
    ctx.wrap_socket(s, server_hostname=sys.argv[4])
    end = "handshake"
except ConnectionResetError:
    end = "reset"
except Exception as e:
    end = type(e).__name__
print("%s %s" % (sys.argv[1], end), flush=True)
""";

    /// <summary>ROUNDS request/response round trips of 64 bytes on one connection: "LABEL median_ms=X".</summary>
    private const string RoundTrips = """
import socket, sys, time
s = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=20)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
times = []
for i in range(int(sys.argv[4])):
    t = time.monotonic()
    s.sendall(b"x" * 64)
    got = 0
    while got < 64:
        c = s.recv(64 - got)
        if not c:
            raise SystemExit("closed")
        got += len(c)
    times.append((time.monotonic() - t) * 1000)
times.sort()
print("%s median_ms=%.2f" % (sys.argv[1], times[len(times) // 2]), flush=True)
""";

    private string Write(string name, string text)
    {
        string path = Path.Combine(_dir, name);
        File.WriteAllText(path, text);
        return path;
    }

    [Fact]
    public async Task RejectDenyAllowHostAndResetRulesWithCountersAndRunTimeChanges()
    {
        using var http = new TinyHttpServer();
        using var upstream = new TinyDnsServer();
        int ui = LoopbackPort.Free();
        string policy = Write("policy.json", """
            {"rules":[
              {"name":"ads","match":{"dns":"*.blocked.test"},"action":"reject"},
              {"name":"quiet","match":{"dns":"*.quiet.test"},"action":"deny"},
              {"name":"web","match":{"host":"*.web.test"},"action":"reject"},
              {"name":"tls","match":{"sni":"*.tls.test"},"action":"reject"},
              {"name":"cut","match":{"dns":"cut.test"},"action":"allow","reset_after_bytes":100000},
              {"name":"ok","match":{"dns":"ok.test"},"action":"allow"}
            ]}
            """);
        string timer = Write("timer.py", Timer);
        string reader = Write("reader.py", Reader);
        string tls = Write("tls.py", Tls);
        string ready = Path.Combine(_dir, "ready");
        string go = Path.Combine(_dir, "go");
        string url = $":{http.Port}{TinyHttpServer.Path}";
        // The TLS clients first, while 192.168.65.2 has no name yet: only the sni rule can match them. The test's HTTP
        // server waits for a request head that a ClientHello never completes, so an allowed one times out there.
        string script = $"python3 {tls} tlsbad 192.168.65.2 {http.Port} api.tls.test; python3 {tls} tlsgood 192.168.65.2 {http.Port} fine.test; "
            + $"python3 {timer} reject busybox wget -q -O /dev/null http://a.blocked.test{url}; "
            + $"python3 {timer} deny timeout 3 busybox wget -q -O /dev/null http://b.quiet.test{url}; "
            + $"python3 {timer} web busybox wget -q -O /dev/null http://x.web.test{url}; "
            + $"python3 {timer} cutwget busybox wget -q -O /dev/null http://cut.test{url}; "
            + $"python3 {reader} cutread cut.test {http.Port}; "
            + $"busybox wget -q -O - http://ok.test{url} | md5sum; "
            + $"touch {ready}; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
            + $"python3 {timer} late busybox wget -q -O /dev/null http://ok.test{url}";
        string[] records = ["*.blocked.test", "*.quiet.test", "*.web.test", "cut.test", "ok.test"];
        Task<ProcessResult> run = NetRun.RunAsync(
            ["--policy", policy, "--ui", $"tcp://127.0.0.1:{ui}", "--dns-upstream", upstream.EndPoint.ToString(), .. records.SelectMany(r => (string[])["--dns-record", r + "=192.168.65.2"])],
            script, Timeout);
        try
        {
            for (int i = 0; i < 600 && !File.Exists(ready) && !run.IsCompleted; i++)
            {
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
            Assert.True(File.Exists(ready), run.IsCompleted ? NetRun.Describe(await run) : "the namespace's command did not get ready in 60 s");
            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(10) };
            JsonElement before = await RulesAsync(api);
            int servedBefore = http.Requests.Count;

            // Hostile and wrong bodies: 400 with a message naming the field or line, 415 for a non-JSON type; nothing changes.
            foreach (string bad in (string[])[
                new string('[', 10_000) + new string(']', 10_000),
                """{"name":"x","match":{"cidr":"10.0.0.0/40"},"action":"reject"}""",
                """{"name":"x","latency_ms":1e999}""",
                """{"name":"x","rate_kbps":123456789012345678901234567890}""",
                """{"rules":[{"name":"x","match":{"dns":{"a":{"b":{"c":[1]}}}}}]}""",
                """{"name":"x","match":{"ports":"9-1"}}""",
                "not json at all",
            ])
            {
                using HttpResponseMessage r400 = await PostAsync(api, bad);
                string message = await r400.Content.ReadAsStringAsync(TestContext.Current.CancellationToken);
                Assert.True(r400.StatusCode == HttpStatusCode.BadRequest, $"{bad[..Math.Min(bad.Length, 60)]} -> {r400.StatusCode} {message}");
                Assert.Contains("\"message\"", message);
            }
            using (var plain = new StringContent("""{"name":"x"}""", Encoding.UTF8, "text/plain"))
            using (HttpResponseMessage r415 = await api.PostAsync("/api/rules", plain, TestContext.Current.CancellationToken))
            {
                Assert.Equal(HttpStatusCode.UnsupportedMediaType, r415.StatusCode);
            }
            using (HttpResponseMessage gone = await api.DeleteAsync("/api/rules/quiet", TestContext.Current.CancellationToken))
            using (HttpResponseMessage again = await api.DeleteAsync("/api/rules/quiet", TestContext.Current.CancellationToken))
            {
                Assert.Equal((HttpStatusCode.NoContent, HttpStatusCode.NotFound), (gone.StatusCode, again.StatusCode));
            }
            // A rule replaced at run time takes effect for the next flow.
            using (HttpResponseMessage replaced = await PostAsync(api, """{"name":"ok","match":{"dns":"ok.test"},"action":"reject"}"""))
            {
                Assert.Equal(HttpStatusCode.OK, replaced.StatusCode);
            }
            JsonElement after = await RulesAsync(api);
            File.WriteAllText(go, "");
            ProcessResult r = await run;
            string details = $"{NetRun.Describe(r)}\n--- rules before\n{before}\n--- after\n{after}";
            Assert.True(r.ExitCode == 0, details);

            // reject: refused at once; deny: no answer at all (timeout's 124 after 3 s); the host rule: reset before the
            // request reached the server; ok: the whole page; after the change, refused.
            (int Rc, int Ms) reject = Timed(r.StandardOutput, "reject");
            Assert.True(reject.Rc != 0 && reject.Ms < 500, details);
            Assert.Equal(124, Timed(r.StandardOutput, "deny").Rc);
            Assert.True(Timed(r.StandardOutput, "web").Rc != 0, details);
            Assert.Contains("tlsbad reset", r.StandardOutput);
            Assert.Contains("tlsgood TimeoutError", r.StandardOutput);
            Assert.True(Timed(r.StandardOutput, "cutwget").Rc != 0, details);
            Assert.Contains(http.Md5, r.StandardOutput);
            (int lateRc, int lateMs) = Timed(r.StandardOutput, "late");
            Assert.True(lateRc != 0 && lateMs < 500, details);
            // Served: cut's two requests and ok's; never the blocked ones, the web.test request or the late one.
            Assert.Equal(3, servedBefore);
            Assert.Equal(3, http.Requests.Count);

            // reset_after_bytes: the guest saw at most 100,000 bytes, then a reset; the rule carried exactly that much.
            Match read = Regex.Match(r.StandardOutput, @"cutread bytes=(\d+) end=(\w+)");
            Assert.True(read.Success && read.Groups[2].Value == "reset" && int.Parse(read.Groups[1].Value) <= 100_000, details);

            Assert.Equal(1, Counter(before, "ads", "matches"));
            Assert.InRange(Counter(before, "quiet", "matches"), 2, 4); // the SYN and its retransmissions within 3 s
            Assert.Equal(1, Counter(before, "web", "matches"));
            Assert.Equal(1, Counter(before, "tls", "matches"));
            Assert.Equal(2, Counter(before, "cut", "matches"));
            Assert.Equal(200_000, Counter(before, "cut", "bytes"));
            Assert.Equal(1, Counter(before, "ok", "matches"));
            Assert.Equal(["ads", "web", "tls", "cut", "ok"], after.GetProperty("rules").EnumerateArray().Select(x => x.GetProperty("name").GetString()));
            Assert.Equal("reject", after.GetProperty("rules")[4].GetProperty("action").GetString());
        }
        finally
        {
            File.WriteAllText(go, "");
            await run;
        }
    }

    [Fact]
    public async Task LatencyAddsToRoundTripsWithoutTheInspector()
    {
        using var slow = new EchoServer();
        using var fast = new EchoServer();
        using var upstream = new TinyDnsServer();
        string policy = Write("policy.json", $$"""{"rules":[{"name":"slow","match":{"dns":"slow.test","port":{{slow.Port}}},"action":"allow","latency_ms":200}]}""");
        string rr = Write("rr.py", RoundTrips);
        string script = $"python3 {rr} fast 192.168.65.2 {fast.Port} 20; python3 {rr} slow slow.test {slow.Port} 20";
        ProcessResult r = await NetRun.RunAsync(["--policy", policy, "--dns-upstream", upstream.EndPoint.ToString(), "--dns-record", "slow.test=192.168.65.2"], script, Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        double baseline = Median(r.StandardOutput, "fast");
        double delayed = Median(r.StandardOutput, "slow");
        // The rule's 200 ms, within 10%, on top of the unimpaired round trip.
        Assert.True(delayed - baseline is >= 180 and <= 220, $"fast {baseline} ms, slow {delayed} ms\n{NetRun.Describe(r)}");
    }

    [Fact]
    public async Task RateCapsIperf3AndLossDropsItsDatagrams()
    {
        int tcpPort = LoopbackPort.Free();
        int udpPort = LoopbackPort.Free();
        string policy = Write("policy.json", $$"""
            {"rules":[
              {"name":"rate","match":{"cidr":"192.168.65.2/32","port":{{tcpPort}},"proto":"tcp"},"action":"allow","rate_kbps":8000},
              {"name":"loss","match":{"cidr":"192.168.65.2/32","port":{{udpPort}},"proto":"udp"},"action":"allow","loss_pct":20}
            ]}
            """);
        using Process tcpServer = await StartIperf3ServerAsync(tcpPort);
        using Process udpServer = await StartIperf3ServerAsync(udpPort);
        try
        {
            string tcpJson = Path.Combine(_dir, "tcp.json");
            string udpJson = Path.Combine(_dir, "udp.json");
            // UDP: 5,000 datagrams of 1,000 bytes, so 20% is measured to about ±0.6% (one standard deviation). The rule drops
            // iperf3's own set-up datagram one time in five too (the client's JSON then holds an "error", and it still exits 0):
            // up to five tries, so chance alone fails the test about once in three thousand runs.
            string script = $"iperf3 -c 192.168.65.2 -p {tcpPort} -t 5 -J > {tcpJson}; "
                + $"for try in 1 2 3 4 5; do iperf3 -c 192.168.65.2 -p {udpPort} -u -b 10M -l 1000 -t 4 -J > {udpJson}; grep -q '\"error\"' {udpJson} || break; done";
            ProcessResult r = await NetRun.RunAsync(["--policy", policy], script, Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            using JsonDocument tcp = JsonDocument.Parse(File.ReadAllText(tcpJson));
            double bps = tcp.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble();
            Assert.True(bps is >= 7_200_000 and <= 8_800_000, $"{bps:N0} bit/s received under an 8,000 kbps rule\n{NetRun.Describe(r)}");
            using JsonDocument udp = JsonDocument.Parse(File.ReadAllText(udpJson));
            JsonElement sum = udp.RootElement.GetProperty("end").GetProperty("sum");
            double lost = sum.GetProperty("lost_percent").GetDouble();
            Assert.True(sum.GetProperty("packets").GetInt64() >= 4000, udp.RootElement.ToString());
            Assert.True(lost is >= 18 and <= 22, $"{lost}% lost under a 20% rule\n{sum}");
        }
        finally
        {
            foreach (Process p in (Process[])[tcpServer, udpServer])
            {
                if (!p.HasExited)
                {
                    p.Kill();
                }
            }
        }
    }

    /// <summary>
    /// rate_kbps on UDP: iperf3 sends 20 Mbit/s of datagrams from the namespace to an iperf3 server on the host's
    /// 127.0.0.1 (via the host alias) under a 5,000 kbps rule; the gateway polices the flow, so what the server receives
    /// is 5 Mbit/s within 10%, and the rule counts what it dropped.
    /// </summary>
    [Fact]
    public async Task A_rate_rule_polices_udp_to_its_rate()
    {
        int port = LoopbackPort.Free();
        string policy = Write("udp-rate.json", $$"""
            {"rules":[{"name":"udp-rate","match":{"cidr":"192.168.65.2/32","port":{{port}},"proto":"udp"},"action":"allow","rate_kbps":5000}]}
            """);
        using Process server = await StartIperf3ServerAsync(port);
        try
        {
            string json = Path.Combine(_dir, "udp-rate.json.out");
            (ProcessResult r, JsonElement rules) = await RunThenReadRulesAsync("udp-rate", policy,
                $"iperf3 -c 192.168.65.2 -p {port} -u -b 20M -l 1000 -t 5 -J > {json}", waitSeconds: 60);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            using JsonDocument doc = JsonDocument.Parse(File.ReadAllText(json));
            JsonElement received = doc.RootElement.GetProperty("end").GetProperty("sum_received");
            double bps = received.GetProperty("bits_per_second").GetDouble();
            Assert.True(bps is >= 4_500_000 and <= 5_500_000, $"{bps:N0} bit/s received under a 5,000 kbps rule\n{received}\n{rules}");
            // About three quarters of 20 Mbit/s is over the rate: dropped at the gateway, and counted.
            long sent = doc.RootElement.GetProperty("end").GetProperty("sum_sent").GetProperty("packets").GetInt64();
            Assert.InRange(Counter(rules, "udp-rate", "dropped"), sent / 2, sent);
        }
        finally
        {
            if (!server.HasExited)
            {
                server.Kill();
            }
        }
    }

    /// <summary>
    /// loss_pct on TCP: 4 MiB each way (the guest sends random bytes, a server on the host's 127.0.0.1 sends them back once
    /// it has them all) under a 10% rule. The gateway drops segments both ways (a segment is a frame on the link: an
    /// offloaded 64 KiB one counts once), TCP recovers: the bytes arrive whole (SHA-256 on the host and back in the guest),
    /// the rule's dropped/segments is within a tenth of the setting (9-11%: the draw is steered, docs/vpnkit.md), the
    /// guest's kernel counted retransmissions. Before the gateway's out-of-order queue and SACK, 1 MiB each way took
    /// 50 s to a stall (go back N, the guest's retransmission timer backing off); with them 1 MiB took about 15 s, most
    /// of it the download waiting on the gateway's 200 ms timer for a lost last frame; with the tail-loss probe (RFC 8985
    /// §7) 1 MiB takes about a second, too few frames (150-190) for the share below, so 4 MiB goes each way.
    /// </summary>
    [Fact]
    public async Task A_loss_rule_drops_tcp_segments_and_tcp_recovers_every_byte()
    {
        const int Size = 4 << 20;
        var hashes = new List<string>();
        // Upload, then download: one direction at a time, as a bulk transfer is (both at once works too, but its ACKs
        // ride on data, which a sender without SACK does not count as duplicates, RFC 5681 §2).
        using var server = new LoopbackTcpServer(async (c, cancel) =>
        {
            NetworkStream s = c.GetStream();
            byte[] all = new byte[Size];
            int got = 0, n;
            while (got < Size && (n = await s.ReadAsync(all.AsMemory(got), cancel)) > 0)
            {
                got += n;
            }
            lock (hashes)
            {
                hashes.Add(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(all.AsSpan(0, got))));
            }
            await s.WriteAsync(all.AsMemory(0, got), cancel);
            c.Client.Shutdown(SocketShutdown.Send);
        });
        string policy = Write("tcp-loss.json", $$"""
            {"rules":[{"name":"lossy","match":{"cidr":"192.168.65.2/32","port":{{server.Port}},"proto":"tcp"},"action":"allow","loss_pct":10}]}
            """);
        string transfer = Write("transfer.py", """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
s.sendall(data)
h, got = hashlib.sha256(), 0
while True:
    c = s.recv(65536)
    if not c:
        break
    h.update(c)
    got += len(c)
print("sent=%s got=%s bytes=%d" % (hashlib.sha256(data).hexdigest(), h.hexdigest(), got), flush=True)
""");
        string retrans = "nstat -asz TcpRetransSegs TcpExtTCPSackRecovery | awk '/Tcp/ {print $1 \"=\" $2}'";
        (ProcessResult r, JsonElement rules) = await RunThenReadRulesAsync("loss", policy,
            $"{retrans}; python3 {transfer} 192.168.65.2 {server.Port} {Size}; {retrans}", waitSeconds: 80);
        string details = $"{NetRun.Describe(r)}\n--- rules\n{rules}";
        Assert.True(r.ExitCode == 0, details);
        Match m = Regex.Match(r.StandardOutput, @"sent=(\w+) got=(\w+) bytes=(\d+)");
        Assert.True(m.Success, details);
        Assert.Equal(Size.ToString(System.Globalization.CultureInfo.InvariantCulture), m.Groups[3].Value);
        Assert.Equal(m.Groups[1].Value, m.Groups[2].Value);
        lock (hashes)
        {
            Assert.Equal([m.Groups[1].Value], hashes);
        }
        // The share dropped, as the issue asks: within a tenth of the setting (9-11%). The draw keeps the rule's losses
        // within 2 segments of 10% of those seen (RuleLoss), so from 200 segments on this holds on every run.
        long segments = Counter(rules, "lossy", "segments");
        long dropped = Counter(rules, "lossy", "dropped");
        Assert.True(segments >= 200, $"only {segments} segments: too few to measure a share\n{details}");
        double share = 100.0 * dropped / segments;
        Assert.True(Math.Abs(share - 10) <= 1, $"{dropped} of {segments} segments dropped ({share:F2}%, allowed 9-11) under a 10% rule\n{details}");
        // The guest resent segments. (Its TCPSackRecovery, printed in the details, is usually up too, but not on every
        // run: a loss of the last frame in flight is repaired by a probe or the timer, and the upload is ~30 frames.)
        Assert.True(NstatDelta(r.StandardOutput, "TcpRetransSegs") > 0, details);
    }

    /// <summary>
    /// Runs <paramref name="script"/> in a `kit net run --policy --ui` namespace and reads the rules' counters once it
    /// is done, while the gateway still runs: the namespace's command then waits (30 s at most) for the test's go.
    /// </summary>
    private async Task<(ProcessResult Run, JsonElement Rules)> RunThenReadRulesAsync(string name, string policy, string script, int waitSeconds)
    {
        int ui = LoopbackPort.Free();
        string ready = Path.Combine(_dir, name + "-ready");
        string go = Path.Combine(_dir, name + "-go");
        Task<ProcessResult> run = NetRun.RunAsync(["--policy", policy, "--ui", $"tcp://127.0.0.1:{ui}", "--dns-upstream", "127.0.0.1:9"],
            $"{script}; touch {ready}; i=0; while [ ! -e {go} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done", Timeout);
        JsonElement rules;
        try
        {
            for (int i = 0; i < waitSeconds * 10 && !File.Exists(ready) && !run.IsCompleted; i++)
            {
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
            Assert.True(File.Exists(ready), run.IsCompleted ? NetRun.Describe(await run) : $"{name}: the namespace's command did not finish in {waitSeconds} s");
            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(10) };
            rules = await RulesAsync(api);
        }
        catch
        {
            File.WriteAllText(go, "");
            await run; // the namespace's command ends before the directory it uses goes
            throw;
        }
        File.WriteAllText(go, "");
        return (await run, rules);
    }

    /// <summary>How much an nstat counter printed as NAME=VALUE before and after the transfer grew.</summary>
    private static long NstatDelta(string output, string name)
    {
        MatchCollection m = Regex.Matches(output, $@"^{name}=(\d+)$", RegexOptions.Multiline);
        Assert.True(m.Count == 2, $"{name} printed {m.Count} times\n{output}");
        return long.Parse(m[1].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)
            - long.Parse(m[0].Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public async Task ABadPolicyFileIsRefusedWithItsFieldOrLine()
    {
        string field = Write("field.json", """{"rules":[{"name":"a","match":{"cidr":"10.0.0.0/99"},"action":"reject"}]}""");
        ProcessResult r = await NetRun.RunAsync(["--policy", field], "true", Timeout);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("rules[0].match.cidr", r.StandardError);
        string syntax = Write("syntax.json", "{\"rules\":[\n\n{\"name\":\"a\" \"action\":\"deny\"}]}");
        r = await NetRun.RunAsync(["--policy", syntax], "true", Timeout);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("line 3", r.StandardError);
        Assert.DoesNotContain("   at ", r.StandardError); // one line, no stack trace
    }

    private static async Task<Process> StartIperf3ServerAsync(int port)
    {
        Process server = Process.Start(new ProcessStartInfo("iperf3", $"-s --forceflush -B 127.0.0.1 -p {port}")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        string? line;
        while ((line = await server.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken)) is not null
            && !line.Contains("listening", StringComparison.Ordinal))
        {
        }
        Assert.NotNull(line);
        // Drain the rest so the server never blocks on a full pipe.
        _ = server.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
        _ = server.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        return server;
    }

    private static (int Rc, int Ms) Timed(string output, string label)
    {
        Match m = Regex.Match(output, $@"^{label} rc=(\d+) ms=(\d+)$", RegexOptions.Multiline);
        Assert.True(m.Success, $"no '{label}' line in\n{output}");
        return (int.Parse(m.Groups[1].Value), int.Parse(m.Groups[2].Value));
    }

    private static double Median(string output, string label)
    {
        Match m = Regex.Match(output, $@"^{label} median_ms=([\d.]+)$", RegexOptions.Multiline);
        Assert.True(m.Success, $"no '{label}' line in\n{output}");
        return double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    private static long Counter(JsonElement rules, string name, string counter) =>
        rules.GetProperty("rules").EnumerateArray().Single(r => r.GetProperty("name").GetString() == name).GetProperty(counter).GetInt64();

    /// <summary>
    /// A dns rule holds for IPv6 flows: the address an AAAA answer gave (the host alias fd00:6b69:7400::2, which is the
    /// host's [::1]) is named from that answer, so curl -6 to it by name is refused, while the same address before any
    /// answer named it was served.
    /// </summary>
    [Fact]
    public async Task A_dns_rule_rejects_the_ipv6_address_an_aaaa_answer_gave()
    {
        const string Host6 = "fd00:6b69:7400::2";
        using var http = new TinyHttpServer(size: 4096, bind: IPAddress.IPv6Loopback);
        using var upstream = new TinyDnsServer(new IPEndPoint(IPAddress.Loopback, 0), IPAddress.Parse("192.168.65.2"), IPAddress.Parse(Host6));
        string policy = Write("policy6.json", $$"""{"rules":[{"name":"named","match":{"dns":"{{TinyDnsServer.Name}}"},"action":"reject"}]}""");
        string script = NetRun.WaitForSlaac()
            + $"curl -6 -sS -o /dev/null -m 10 'http://[{Host6}]:{http.Port}/before'; echo \"literal exit $?\"; "
            + $"curl -6 -sS -o /dev/null -m 10 'http://{TinyDnsServer.Name}:{http.Port}/by-name'; echo \"name exit $?\"";
        ProcessResult r = await NetRun.RunAsync(["--policy", policy, "--dns-upstream", upstream.EndPoint.ToString()], script, Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains("literal exit 0", r.StandardOutput, StringComparison.Ordinal);
        Assert.Contains("GET /before HTTP/1.1", http.Requests);
        // Refused at once by the rule (reject: the guest's SYN gets an RST), and the server never saw the request.
        Assert.Contains("name exit 7", r.StandardOutput, StringComparison.Ordinal);
        Assert.DoesNotContain(http.Requests, x => x.Contains("/by-name", StringComparison.Ordinal));
        Assert.Contains($"{TinyDnsServer.Name}/28", upstream.Queries);
    }

    /// <summary>
    /// A reject rule on UDP answers with ICMP "administratively prohibited" (IPv4 code 13, IPv6 code 1), so a connected
    /// socket in the guest fails at once with EHOSTUNREACH instead of waiting out its timeout; the datagram never reaches
    /// the host.
    /// </summary>
    [Fact]
    public async Task A_reject_rule_on_udp_fails_the_guests_socket_at_once_over_both_families()
    {
        (Socket v4, int port4) = LoopbackUdp(IPAddress.Loopback);
        (Socket v6, int port6) = LoopbackUdp(IPAddress.IPv6Loopback);
        using Socket closeV4 = v4, closeV6 = v6;
        string policy = Write("udp.json", $$"""
            {"rules":[{"name":"no-udp4","match":{"proto":"udp","port":{{port4}}},"action":"reject"},
                      {"name":"no-udp6","match":{"proto":"udp","port":{{port6}}},"action":"reject"}]}
            """);
        string client = Write("udp.py", """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.connect((sys.argv[2], int(sys.argv[3])))
s.settimeout(5)
t = time.monotonic()
s.send(b"are you there")
try:
    s.recv(100)
    print(f"{sys.argv[1]} reply")
except OSError as e:
    print(f"{sys.argv[1]} errno={e.errno} ms={int((time.monotonic() - t) * 1000)}")
""");
        string script = NetRun.WaitForSlaac()
            + $"python3 {client} v4 192.168.65.2 {port4}; python3 {client} v6 fd00:6b69:7400::2 {port6}";
        ProcessResult r = await NetRun.RunAsync(["--policy", policy, "--dns-upstream", "127.0.0.1:9"], script, Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        // Linux reads ICMP code 13 as EHOSTUNREACH (113) and ICMPv6 code 1 as EACCES (13).
        foreach ((string family, string errno) in new[] { ("v4", "113"), ("v6", "13") })
        {
            Match m = Regex.Match(r.StandardOutput, $@"{family} errno=(\d+) ms=(\d+)");
            Assert.True(m.Success, NetRun.Describe(r));
            Assert.Equal(errno, m.Groups[1].Value);
            Assert.True(int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) < 2000, r.StandardOutput);
        }
        Assert.Equal(0, v4.Available);
        Assert.Equal(0, v6.Available);
    }

    /// <summary>
    /// latency_ms on datagrams and echoes: a UDP round trip to an echo server on the host's loopback, under a rule of
    /// 150 ms, takes at least that (the datagram waits at the gateway), while the same client to another port, with no
    /// rule, does not; ping6 to the host alias (the host's ::1) under an icmp rule of 150 ms shows it in its times.
    /// </summary>
    [Fact]
    public async Task Latency_rules_hold_back_datagrams_and_echoes()
    {
        (Socket slow, int slowPort) = LoopbackUdp(IPAddress.Loopback);
        (Socket fast, int fastPort) = LoopbackUdp(IPAddress.Loopback);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        Task echoes = Task.WhenAll(Echo(slow, stop.Token), Echo(fast, stop.Token));
        string policy = Write("latency.json", $$"""
            {"rules":[{"name":"slow-udp","match":{"proto":"udp","port":{{slowPort}}},"action":"allow","latency_ms":150},
                      {"name":"slow-ping","match":{"proto":"icmp"},"action":"allow","latency_ms":150}]}
            """);
        string client = Write("rtt.py", """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[2], int(sys.argv[3])))
s.settimeout(5)
best = None
for i in range(5):
    t = time.monotonic()
    s.send(b"ping %d" % i)
    s.recv(100)
    ms = (time.monotonic() - t) * 1000
    best = ms if best is None else min(best, ms)
print(f"{sys.argv[1]} best_ms={int(best)}")
""");
        string script = NetRun.WaitForSlaac()
            + $"python3 {client} slow 192.168.65.2 {slowPort}; python3 {client} fast 192.168.65.2 {fastPort}; "
            + "busybox ping6 -c 3 -W 5 fd00:6b69:7400::2";
        try
        {
            ProcessResult r = await NetRun.RunAsync(["--policy", policy, "--dns-upstream", "127.0.0.1:9"], script, Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            int Best(string label) => int.Parse(Regex.Match(r.StandardOutput, $@"{label} best_ms=(\d+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
            Assert.InRange(Best("slow"), 150, 2000);
            Assert.InRange(Best("fast"), 0, 149);
            // busybox ping6: "round-trip min/avg/max = A/B/C ms"; the minimum is held back too.
            Match rt = Regex.Match(r.StandardOutput, @"min/avg/max = ([\d.]+)/");
            Assert.True(rt.Success, NetRun.Describe(r));
            Assert.InRange(double.Parse(rt.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), 150, 2000);
        }
        finally
        {
            await stop.CancelAsync();
            slow.Dispose();
            fast.Dispose();
            await echoes.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        }

        static async Task Echo(Socket s, CancellationToken stop)
        {
            byte[] buffer = new byte[2048];
            var from = new IPEndPoint(IPAddress.Any, 0);
            try
            {
                while (true)
                {
                    SocketReceiveFromResult got = await s.ReceiveFromAsync(buffer, from, stop);
                    await s.SendToAsync(buffer.AsMemory(0, got.ReceivedBytes), got.RemoteEndPoint, stop);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
            }
        }
    }

    /// <summary>A UDP socket on the host's loopback (<paramref name="address"/>: 127.0.0.1 or ::1) and its port.</summary>
    private static (Socket Socket, int Port) LoopbackUdp(IPAddress address)
    {
        var s = new Socket(address.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        s.Bind(new IPEndPoint(address, 0));
        return (s, ((IPEndPoint)s.LocalEndPoint!).Port);
    }

    private static async Task<JsonElement> RulesAsync(HttpClient api)
    {
        string text = await api.GetStringAsync("/api/rules", TestContext.Current.CancellationToken);
        using JsonDocument doc = JsonDocument.Parse(text);
        return doc.RootElement.Clone();
    }

    private static Task<HttpResponseMessage> PostAsync(HttpClient api, string body) =>
        api.PostAsync("/api/rules", new StringContent(body, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);

    /// <summary>Echoes every connection's bytes back on the host's loopback.</summary>
    private sealed class EchoServer : IDisposable
    {
        private readonly LoopbackTcpServer _server = new(EchoAsync);

        public int Port => _server.Port;

        private static async Task EchoAsync(TcpClient c, CancellationToken cancel)
        {
            c.NoDelay = true;
            NetworkStream s = c.GetStream();
            byte[] buffer = new byte[4096];
            int n;
            while ((n = await s.ReadAsync(buffer, cancel)) > 0)
            {
                await s.WriteAsync(buffer.AsMemory(0, n), cancel);
            }
        }

        public void Dispose() => _server.Dispose();
    }
}
