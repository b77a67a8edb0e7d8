using System.Net;
using System.Text;
using System.Text.Json;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// A capture of one flow started and stopped at run time through <c>/api/pcap</c>: busybox wget fetches from two loopback
/// servers while the capture of the first runs; tshark reads the streamed file and finds that flow's packets only, with
/// its handshake and its HTTP request; the same over IPv6; and captures of one policy rule.
/// </summary>
[Trait("Tier", "Real")]
public sealed class InspectorPcapTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    public InspectorPcapTests()
    {
        NetRun.RequirePrerequisites();
        Assert.True(File.Exists("/usr/bin/tshark"), "tshark is missing (./test installs it)");
    }

    [Fact]
    public async Task A_capture_of_one_flow_holds_that_flow_only()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        using var wanted = new TinyHttpServer(size: 4096);
        using var other = new TinyHttpServer(size: 4096);
        int ui = LoopbackPort.Free();
        string dir = Directory.CreateTempSubdirectory("kit-pcap-flow-").FullName;
        string go = Path.Combine(dir, "go"), done = Path.Combine(dir, "done"), end = Path.Combine(dir, "end");
        string pcap = Path.Combine(dir, "flow.pcap");
        try
        {
            string script = $"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
                + $"busybox wget -q -O /dev/null http://192.168.65.2:{wanted.Port}/wanted-path; busybox wget -q -O /dev/null http://192.168.65.2:{other.Port}/other-path; "
                + $"touch {done}; i=0; while [ ! -e {end} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";
            Task<ProcessResult> run = NetRun.RunAsync(["--ui", $"tcp://127.0.0.1:{ui}", "--dns-upstream", "127.0.0.1:9"], script, Timeout);
            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(30) };
            await WaitForApi(api, run);

            // Refusals first: a form-style POST (what another site's page can send unasked), an unknown flow, a bad filter.
            using (HttpResponseMessage r = await api.PostAsync("/api/pcap", new StringContent("{\"remotePort\":1}", Encoding.UTF8, "text/plain"), ct))
            {
                Assert.Equal(HttpStatusCode.UnsupportedMediaType, r.StatusCode);
            }
            using (HttpResponseMessage r = await Post(api, "{\"flow\":999999}"))
            {
                Assert.Equal(HttpStatusCode.NotFound, r.StatusCode);
            }
            using (HttpResponseMessage r = await Post(api, "{\"proto\":\"sctp\"}"))
            {
                Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            }

            (long id, Task streamed) = await StartCapture(api, $"{{\"proto\":\"tcp\",\"remote\":\"192.168.65.2\",\"remotePort\":{wanted.Port}}}", pcap);
            await Go(go, done, run);
            long flowId = await EndedFlow(api, wanted.Port);
            // kit net pcap --flow: a capture by flow id (that flow's 5-tuple) is held beside the first while it runs;
            // SIGINT deletes it, and the file it wrote is a whole libpcap file.
            string cliFile = Path.Combine(dir, "cli.pcap");
            using (RunningProcess cli = ProcessRunner.Start(KitCli.ExecutablePath, ["net", "pcap", "--api", $"http://127.0.0.1:{ui}", "--flow", $"{flowId}", "-w", cliFile]))
            {
                int held = 0;
                for (int i = 0; i < 100 && held < 2; i++)
                {
                    await Task.Delay(100, ct);
                    held = JsonDocument.Parse(await api.GetStringAsync("/api/pcap", ct)).RootElement.GetArrayLength();
                }
                Assert.Equal(2, held);
                (await ProcessRunner.RunAsync("kill", ["-INT", $"{cli.Id}"], TimeSpan.FromSeconds(10), cancellationToken: ct)).EnsureSuccess();
                ProcessResult stopped = await cli.WaitAsync(TimeSpan.FromSeconds(30), ct);
                Assert.True(stopped.ExitCode == 0, stopped.ToString());
            }
            Assert.Equal(1, JsonDocument.Parse(await api.GetStringAsync("/api/pcap", ct)).RootElement.GetArrayLength());
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(cliFile));
            ProcessResult empty = await ProcessRunner.RunAsync("tshark", ["-r", cliFile], TimeSpan.FromSeconds(60), cancellationToken: ct);
            Assert.True(empty.ExitCode == 0, empty.ToString());

            Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync($"/api/pcap/{id}", ct)).StatusCode);
            await streamed.WaitAsync(TimeSpan.FromSeconds(10), ct);
            Assert.Equal(HttpStatusCode.NotFound, (await api.DeleteAsync($"/api/pcap/{id}", ct)).StatusCode);
            File.WriteAllText(end, "");
            ProcessResult finished = await run;
            Assert.True(finished.ExitCode == 0, NetRun.Describe(finished));

            ProcessResult tshark = await ProcessRunner.RunAsync("tshark", ["-r", pcap, "-T", "fields", "-E", "separator=,",
                "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.syn", "-e", "http.request.uri"], TimeSpan.FromSeconds(60), cancellationToken: ct);
            Assert.True(tshark.ExitCode == 0, tshark.ToString());
            string[] packets = tshark.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            string all = tshark.StandardOutput;
            Assert.True(packets.Length >= 8, all);
            string port = wanted.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            Assert.All(packets, p => Assert.Contains(port, p.Split(',')[..2]));
            Assert.Contains(packets, p => p.Split(',')[2] is "1" or "True");
            Assert.Contains(packets, p => p.EndsWith(",/wanted-path", StringComparison.Ordinal));
            Assert.DoesNotContain("/other-path", all);
        }
        finally
        {
            File.WriteAllText(end, "");
            File.WriteAllText(go, "");
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// The same over IPv6: the guest fetches from the host alias fd00:6b69:7400::2 (the host's [::1]); a capture by
    /// address and port, and one by the flow's id, are accepted (both were refused as "not an IPv4 address"), and tshark
    /// finds that flow's IPv6 packets only, with its handshake and request.
    /// </summary>
    [Fact]
    public async Task A_capture_of_one_ipv6_flow_holds_that_flow_only()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        using var wanted = new TinyHttpServer(size: 4096, bind: IPAddress.IPv6Loopback);
        using var other = new TinyHttpServer(size: 4096, bind: IPAddress.IPv6Loopback);
        int ui = LoopbackPort.Free();
        string dir = Directory.CreateTempSubdirectory("kit-pcap-flow6-").FullName;
        string go = Path.Combine(dir, "go"), done = Path.Combine(dir, "done"), end = Path.Combine(dir, "end");
        string pcap = Path.Combine(dir, "flow6.pcap");
        const string Host6 = "fd00:6b69:7400::2";
        try
        {
            // SLAAC first (bounded, 10 s), so the fetch leaves from the guest's global address.
            string script = NetRun.WaitForSlaac()
                + $"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
                + $"busybox wget -q -O /dev/null 'http://[{Host6}]:{wanted.Port}/wanted6'; busybox wget -q -O /dev/null 'http://[{Host6}]:{other.Port}/other6'; "
                + $"touch {done}; i=0; while [ ! -e {end} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";
            Task<ProcessResult> run = NetRun.RunAsync(["--ui", $"tcp://127.0.0.1:{ui}", "--dns-upstream", "127.0.0.1:9"], script, Timeout);
            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(30) };
            await WaitForApi(api, run);

            (long id, Task streamed) = await StartCapture(api, $"{{\"proto\":\"tcp\",\"remote\":\"{Host6}\",\"remotePort\":{wanted.Port}}}", pcap);
            await Go(go, done, run);
            long flowId = await EndedFlow(api, wanted.Port);
            using (HttpResponseMessage byFlow = await Post(api, $"{{\"flow\":{flowId}}}"))
            {
                string body = await byFlow.Content.ReadAsStringAsync(ct);
                Assert.True(byFlow.StatusCode == HttpStatusCode.Created, body);
                Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync(byFlow.Headers.Location, ct)).StatusCode);
            }
            Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync($"/api/pcap/{id}", ct)).StatusCode);
            await streamed.WaitAsync(TimeSpan.FromSeconds(10), ct);
            File.WriteAllText(end, "");
            ProcessResult finished = await run;
            Assert.True(finished.ExitCode == 0, NetRun.Describe(finished));

            ProcessResult tshark = await ProcessRunner.RunAsync("tshark", ["-r", pcap, "-T", "fields", "-E", "separator=,",
                "-e", "ipv6.src", "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.flags.syn", "-e", "http.request.uri"], TimeSpan.FromSeconds(60), cancellationToken: ct);
            Assert.True(tshark.ExitCode == 0, tshark.ToString());
            string[] packets = tshark.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            string all = tshark.StandardOutput;
            Assert.True(packets.Length >= 8, all);
            string port = wanted.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            Assert.All(packets, p => Assert.StartsWith("fd00:6b69:7400:", p, StringComparison.Ordinal));
            Assert.All(packets, p => Assert.Contains(port, p.Split(',')[1..3]));
            Assert.Contains(packets, p => p.Split(',')[3] is "1" or "True");
            Assert.Contains(packets, p => p.EndsWith(",/wanted6", StringComparison.Ordinal));
            Assert.DoesNotContain("/other6", all);
        }
        finally
        {
            File.WriteAllText(end, "");
            File.WriteAllText(go, "");
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// A capture of one policy rule each (issue 17, item 2): under `kit net run --policy` with a `reject` rule on a port
    /// and a named `allow` rule, the guest fetches through the allowed rule, is refused by the reject rule over IPv4 and
    /// IPv6, sends a datagram the reject rule answers with "administratively prohibited", fetches from a port no rule
    /// names, and sends a request there whose Host a third rule rejects once the proxy has read it. `kit net pcap --rule` holds the reject rule's frames only: the SYNs and the gateway's RSTs of both families,
    /// the datagram and the ICMP error quoting it, and ends (saying why) when that rule is deleted. `/api/pcap?rule=` holds the allowed flow only, handshake and request
    /// included, and ends by itself when that rule is deleted. The Host rule's capture holds that flow's handshake and
    /// request (frames that passed before its rule was known) and the reset. Unknown rules are refused.
    /// </summary>
    [Fact]
    public async Task A_capture_of_one_rule_holds_the_flows_it_decided_and_what_it_blocked()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        using var web = new TinyHttpServer(size: 4096);
        using var other = new TinyHttpServer(size: 4096);
        int blocked = LoopbackPort.Free(), ui = LoopbackPort.Free();
        string dir = Directory.CreateTempSubdirectory("kit-pcap-rule-").FullName;
        string go = Path.Combine(dir, "go"), done = Path.Combine(dir, "done"), end = Path.Combine(dir, "end");
        string webPcap = Path.Combine(dir, "web.pcap"), blockedPcap = Path.Combine(dir, "blocked.pcap");
        string policy = Path.Combine(dir, "policy.json");
        File.WriteAllText(policy, $$"""
            {"rules":[
              {"name":"blocked","match":{"port":{{blocked}}},"action":"reject"},
              {"name":"web","match":{"proto":"tcp","port":{{web.Port}}},"action":"allow"},
              {"name":"byhost","match":{"host":"*.blocked.test"},"action":"reject"}
            ]}
            """);
        // A request whose Host only the first bytes tell: decided by the proxy after the handshake, reset before any byte
        // of it reaches the host.
        string byHost = Path.Combine(dir, "byhost.py");
        File.WriteAllText(byHost, """
            import socket, sys
            s = socket.create_connection(("192.168.65.2", int(sys.argv[1])), timeout=10)
            s.sendall(b"GET /byhost-path HTTP/1.0\r\nHost: x.blocked.test\r\n\r\n")
            try:
                s.recv(100)
            except OSError:
                pass
            """);
        string byHostPcap = Path.Combine(dir, "byhost.pcap");
        const string Host6 = "fd00:6b69:7400::2";
        try
        {
            string script = NetRun.WaitForSlaac()
                + $"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
                + $"busybox wget -q -O /dev/null http://192.168.65.2:{web.Port}/web-path; "
                + $"busybox wget -q -O /dev/null http://192.168.65.2:{blocked}/blocked-path; "
                + $"busybox wget -q -O /dev/null 'http://[{Host6}]:{blocked}/blocked6'; "
                + $"busybox wget -q -O /dev/null http://192.168.65.2:{other.Port}/other-path; "
                + $"python3 {byHost} {other.Port}; "
                + $"python3 -c \"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'kit-denied', ('192.168.65.2', {blocked}))\"; "
                + $"sleep 0.5; touch {done}; i=0; while [ ! -e {end} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";
            Task<ProcessResult> run = NetRun.RunAsync(["--ui", $"tcp://127.0.0.1:{ui}", "--policy", policy, "--dns-upstream", "127.0.0.1:9"], script, Timeout);
            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(30) };
            await WaitForApi(api, run);

            using (HttpResponseMessage r = await Post(api, "{\"rule\":\"nope\"}"))
            {
                Assert.Equal(HttpStatusCode.NotFound, r.StatusCode);
                using JsonDocument m = JsonDocument.Parse(await r.Content.ReadAsStringAsync(ct));
                Assert.StartsWith("no rule 'nope'", m.RootElement.GetProperty("message").GetString(), StringComparison.Ordinal);
            }
            using (HttpResponseMessage r = await Post(api, "{\"rule\":\"web\",\"flow\":1}"))
            {
                Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
            }
            ProcessResult neither = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["net", "pcap", "--api", $"http://127.0.0.1:{ui}", "-w", Path.Combine(dir, "x.pcap")], TimeSpan.FromSeconds(30), cancellationToken: ct);
            Assert.True(neither.ExitCode != 0 && neither.StandardError.Contains("--rule NAME", StringComparison.Ordinal), neither.ToString());

            // The allowed rule through the API's address form (the body may be empty, still sent as JSON).
            (long webId, Task webStreamed) = await StartCapture(api, "", webPcap, "/api/pcap?rule=web");
            using RunningProcess cli = ProcessRunner.Start(KitCli.ExecutablePath, ["net", "pcap", "--api", $"http://127.0.0.1:{ui}", "--rule", "blocked", "-w", blockedPcap]);
            (long byHostId, Task byHostStreamed) = await StartCapture(api, "{\"rule\":\"byhost\"}", byHostPcap);
            int held = 0;
            for (int i = 0; i < 100 && held < 3; i++)
            {
                await Task.Delay(100, ct);
                held = JsonDocument.Parse(await api.GetStringAsync("/api/pcap", ct)).RootElement.GetArrayLength();
            }
            Assert.Equal(3, held);
            await Go(go, done, run);
            await EndedFlow(api, web.Port);
            Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync($"/api/pcap/{byHostId}", ct)).StatusCode);
            await byHostStreamed.WaitAsync(TimeSpan.FromSeconds(10), ct);

            // Deleting a rule ends its captures: kit net pcap's stream reaches its end, and it says why and exits 0.
            Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync("/api/rules/blocked", ct)).StatusCode);
            ProcessResult stopped = await cli.WaitAsync(TimeSpan.FromSeconds(30), ct);
            Assert.True(stopped.ExitCode == 0, stopped.ToString());
            Assert.Contains("ended: rule deleted", stopped.StandardError, StringComparison.Ordinal);
            // The same through the API: the stream ends by itself, and the capture, still listed, says why.
            Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync("/api/rules/web", ct)).StatusCode);
            await webStreamed.WaitAsync(TimeSpan.FromSeconds(10), ct);
            using (JsonDocument list = JsonDocument.Parse(await api.GetStringAsync("/api/pcap", ct)))
            {
                JsonElement c = Assert.Single(list.RootElement.EnumerateArray());
                Assert.Equal(webId, c.GetProperty("id").GetInt64());
                Assert.Equal("web", c.GetProperty("rule").GetString());
                Assert.Equal("rule deleted", c.GetProperty("ended").GetString());
                Assert.Equal(1, c.GetProperty("flows").GetInt64());
            }
            Assert.Equal(HttpStatusCode.NoContent, (await api.DeleteAsync($"/api/pcap/{webId}", ct)).StatusCode);
            File.WriteAllText(end, "");
            ProcessResult finished = await run;
            Assert.True(finished.ExitCode == 0, NetRun.Describe(finished));

            string webPort = web.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            string[] webPackets = await Fields(webPcap, "tcp.srcport", "tcp.dstport", "tcp.flags.syn", "http.request.uri");
            Assert.True(webPackets.Length >= 8, string.Join('\n', webPackets));
            Assert.All(webPackets, p => Assert.Contains(webPort, p.Split('|')[..2]));
            Assert.Contains(webPackets, p => p.Split('|')[2] is "1" or "True");
            Assert.Contains(webPackets, p => p.EndsWith("|/web-path", StringComparison.Ordinal));

            // The host rule's: the handshake and the request that decided it (held until then), and the reset; not the
            // flow to the same port that no rule took.
            string otherPort = other.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
            string[] hostPackets = await Fields(byHostPcap, "tcp.srcport", "tcp.dstport", "tcp.flags.syn", "tcp.flags.reset", "http.request.uri");
            string hostAll = string.Join('\n', hostPackets);
            Assert.All(hostPackets, p => Assert.Contains(otherPort, p.Split('|')[..2]));
            Assert.Contains(hostPackets, p => p.Split('|')[1] == otherPort && Set(p.Split('|')[2]));
            Assert.Contains(hostPackets, p => p.EndsWith("|/byhost-path", StringComparison.Ordinal));
            Assert.Contains(hostPackets, p => p.Split('|')[0] == otherPort && Set(p.Split('|')[3]));
            Assert.DoesNotContain("/other-path", hostAll, StringComparison.Ordinal);
            Assert.Single(hostPackets.Select(p => p.Split('|')[0] == otherPort ? p.Split('|')[1] : p.Split('|')[0]).Distinct());

            // The reject rule's: per packet the addresses, TCP ports and flags, UDP ports (of the datagram or of the
            // datagram an ICMP error quotes), ICMP type and code.
            string port = blocked.ToString(System.Globalization.CultureInfo.InvariantCulture);
            string[] packets = await Fields(blockedPcap, "ip.src", "ipv6.src", "tcp.srcport", "tcp.dstport", "tcp.flags.syn", "tcp.flags.reset", "udp.dstport", "icmp.type", "icmp.code");
            string all = string.Join('\n', packets);
            Assert.All(packets, p => Assert.Contains(port, p, StringComparison.Ordinal));
            Assert.DoesNotContain(webPort, all, StringComparison.Ordinal);
            string[][] f = [.. packets.Select(p => p.Split('|'))];
            Assert.Contains(f, p => p[0] == "192.168.65.3" && p[3] == port && Set(p[4]) && !Set(p[5]));
            Assert.Contains(f, p => p[0] == "192.168.65.2" && p[2] == port && Set(p[5]));
            Assert.Contains(f, p => p[1].StartsWith("fd00:6b69:7400:", StringComparison.Ordinal) && p[1] != Host6 && p[3] == port && Set(p[4]) && !Set(p[5]));
            Assert.Contains(f, p => p[1] == Host6 && p[2] == port && Set(p[5]));
            Assert.Contains(f, p => p[0] == "192.168.65.3" && p[6] == port && p[7] == "");
            Assert.Contains(f, p => p[0] == "192.168.65.1" && p[7] == "3" && p[8] == "13" && p[6] == port);
        }
        finally
        {
            File.WriteAllText(end, "");
            File.WriteAllText(go, "");
            Directory.Delete(dir, recursive: true);
        }
    }

    private static bool Set(string flag) => flag is "1" or "True";

    /// <summary>
    /// tshark's fields of every packet in <paramref name="file"/>, one line each, separated by '|'; each field's first
    /// occurrence (an ICMP error's own, or the quoted packet's when it has none).
    /// </summary>
    private static async Task<string[]> Fields(string file, params string[] fields)
    {
        var args = new List<string> { "-r", file, "-T", "fields", "-E", "separator=|", "-E", "occurrence=f" };
        foreach (string field in fields)
        {
            args.AddRange(["-e", field]);
        }
        ProcessResult tshark = await ProcessRunner.RunAsync("tshark", [.. args], TimeSpan.FromSeconds(60), cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(tshark.ExitCode == 0, tshark.ToString());
        return tshark.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    /// <summary>POSTs a capture and streams it into <paramref name="file"/> until the capture is deleted.</summary>
    private static async Task<(long Id, Task Streamed)> StartCapture(HttpClient api, string json, string file, string path = "/api/pcap")
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        using HttpResponseMessage created = await Post(api, json, path);
        string body = await created.Content.ReadAsStringAsync(ct);
        Assert.True(created.StatusCode == HttpStatusCode.Created, $"{json}: {(int)created.StatusCode} {body}");
        long id;
        using (JsonDocument c = JsonDocument.Parse(body))
        {
            id = c.RootElement.GetProperty("id").GetInt64();
        }
        return (id, Task.Run(async () =>
        {
            await using FileStream f = File.Create(file);
            await using Stream stream = await api.GetStreamAsync($"/api/pcap/{id}", ct);
            await stream.CopyToAsync(f, ct);
        }, ct));
    }

    /// <summary>Lets the guest's script go on, and waits (30 s at most) until it says its fetches are done.</summary>
    private static async Task Go(string go, string done, Task<ProcessResult> run)
    {
        File.WriteAllText(go, "");
        for (int i = 0; i < 300 && !File.Exists(done) && !run.IsCompleted; i++)
        {
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.True(File.Exists(done), run.IsCompleted ? NetRun.Describe(await run) : "wget did not finish in 30 s");
    }

    /// <summary>
    /// The id of the flow to <paramref name="remotePort"/> once it has ended: its last packets (FIN, ACK) pass the switch
    /// as the guest closes, so the capture is whole only when the inspector saw the end.
    /// </summary>
    private static async Task<long> EndedFlow(HttpClient api, int remotePort)
    {
        for (int i = 0; i < 50; i++)
        {
            using JsonDocument flows = JsonDocument.Parse(await api.GetStringAsync("/api/flows", TestContext.Current.CancellationToken));
            JsonElement? f = flows.RootElement.EnumerateArray().Cast<JsonElement?>()
                .FirstOrDefault(x => x!.Value.GetProperty("remotePort").GetInt32() == remotePort && x.Value.GetProperty("ended").ValueKind == JsonValueKind.String);
            if (f is JsonElement ended)
            {
                return ended.GetProperty("id").GetInt64();
            }
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Fail($"no ended flow to port {remotePort} in /api/flows");
        return 0;
    }

    private static Task<HttpResponseMessage> Post(HttpClient api, string json, string path = "/api/pcap") =>
        api.PostAsync(path, new StringContent(json, Encoding.UTF8, "application/json"), TestContext.Current.CancellationToken);

    /// <summary>Waits until the inspector answers (kit has made the namespace and started Kestrel).</summary>
    internal static async Task WaitForApi(HttpClient api, Task<ProcessResult> run)
    {
        for (int i = 0; i < 300 && !run.IsCompleted; i++)
        {
            try
            {
                using HttpResponseMessage r = await api.GetAsync("/api/flows", TestContext.Current.CancellationToken);
                if (r.IsSuccessStatusCode)
                {
                    return;
                }
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Fail(run.IsCompleted ? NetRun.Describe(await run) : "the inspector did not answer in 30 s");
    }
}
