using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// `kit net run` with real clients: the namespace's own Linux TCP/IP stack talks to our gateway through a TAP,
/// and busybox/iperf3 are the programs under test. Every upstream is a server this test runs on 127.0.0.1.
/// </summary>
[Trait("Tier", "Real")]
public sealed class NetRunTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    public NetRunTests() => NetRun.RequirePrerequisites();

    [Fact]
    public async Task WgetReachesHostLoopbackThroughHostAlias()
    {
        using var http = new TinyHttpServer();
        ProcessResult r = await NetRun.RunAsync([], $"busybox wget -q -O - http://192.168.65.2:{http.Port}{TinyHttpServer.Path} | md5sum", Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains(http.Md5, r.StandardOutput);
    }

    [Fact]
    public async Task NslookupResolvesThroughLocalUpstreamIncludingNxdomainAndBuiltIns()
    {
        using var dns = new TinyDnsServer();
        string[] opts = ["--dns-upstream", $"127.0.0.1:{dns.EndPoint.Port}"];
        // The namespace's resolv.conf names the gateway, so plain `nslookup NAME` goes through it.
        ProcessResult r = await NetRun.RunAsync(opts,
            $"cat /etc/resolv.conf; busybox nslookup {TinyDnsServer.Name}; echo ===; busybox nslookup missing.example; echo ===; busybox nslookup host.docker.internal",
            Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(parts.Length == 3, NetRun.Describe(r));
        Assert.Contains("nameserver 192.168.65.1", parts[0]);
        Assert.Contains(TinyDnsServer.Address.ToString(), parts[0]);
        Assert.Contains("NXDOMAIN", parts[1]);
        Assert.Contains("192.168.65.2", parts[2]);
        Assert.True(dns.Queries.Count >= 2, $"upstream saw {dns.Queries.Count} queries\n{NetRun.Describe(r)}");
    }

    [Fact]
    public async Task PingGatewayAndHostAlias()
    {
        ProcessResult r = await NetRun.RunAsync([], "busybox ping -c 2 -W 5 192.168.65.1 && busybox ping -c 2 -W 5 192.168.65.2", Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains("2 packets received", r.StandardOutput);
        Assert.DoesNotContain(" 0 packets received", r.StandardOutput);
    }

    [Fact]
    public async Task UdhcpcGetsALeaseWithRouterDnsAndMtu()
    {
        string script = Path.Combine(Path.GetTempPath(), $"kit-udhcpc-{Guid.NewGuid():N}.sh");
        File.WriteAllText(script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE ip=$ip subnet=$subnet router=$router dns=$dns mtu=$mtu\"\nexit 0\n");
        if (!OperatingSystem.IsWindows())
        {
            File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        }
        try
        {
            // Configuration left to DHCP: drop the address kit configured, then ask for a lease.
            ProcessResult r = await NetRun.RunAsync(["--mtu", "1400"],
                $"ip addr flush dev eth0 && busybox udhcpc -i eth0 -n -q -f -t 5 -T 2 -s {script}", Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            Assert.Contains("LEASE ip=192.168.65.3 subnet=255.255.255.0 router=192.168.65.1 dns=192.168.65.1 mtu=1400", r.StandardOutput);
        }
        finally
        {
            File.Delete(script);
        }
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public async Task Iperf3CompletesBothDirections(bool reverse, bool udp)
    {
        int port = LoopbackPort.Free();
        using Process server = Process.Start(new ProcessStartInfo("iperf3", $"-s -1 --forceflush -B 127.0.0.1 -p {port}")
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        try
        {
            // Connecting to probe would use up the one-off server; wait for its banner instead.
            string? line;
            while ((line = await server.StandardOutput.ReadLineAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken)) is not null && !line.Contains("listening", StringComparison.Ordinal))
            {
            }
            Assert.NotNull(line);
            string args = $"-c 192.168.65.2 -p {port} -t 2 -J{(reverse ? " -R" : "")}{(udp ? " -u -b 100M" : "")}";
            ProcessResult r = await NetRun.RunAsync([], $"iperf3 {args}", Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            using JsonDocument doc = JsonDocument.Parse(r.StandardOutput);
            JsonElement end = doc.RootElement.GetProperty("end");
            long bytes = udp
                ? end.GetProperty("sum").GetProperty("bytes").GetInt64()
                : end.GetProperty("sum_received").GetProperty("bytes").GetInt64();
            Assert.True(bytes > 1_000_000, $"only {bytes} bytes crossed\n{NetRun.Describe(r)}");
        }
        finally
        {
            if (!server.HasExited)
            {
                server.Kill();
            }
        }
    }

    [Fact]
    public async Task PublishedPortIsReachedFromTheHost()
    {
        int hostPort = LoopbackPort.Free();
        // The namespace serves one HTTP response on 8080 with busybox nc; the host fetches it via 127.0.0.1:hostPort.
        Task<ProcessResult> run = NetRun.RunAsync(["--publish", $"{hostPort}:8080"],
            "printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 9\\r\\n\\r\\npublished' | busybox nc -l -p 8080", Timeout);
        string? body = null;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (body is null && DateTime.UtcNow < deadline && !run.IsCompleted)
        {
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, hostPort, TestContext.Current.CancellationToken);
                NetworkStream s = client.GetStream();
                await s.WriteAsync(Encoding.ASCII.GetBytes("GET / HTTP/1.0\r\n\r\n"), TestContext.Current.CancellationToken);
                using var reader = new StreamReader(s);
                string text = await reader.ReadToEndAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
                if (text.Contains("published", StringComparison.Ordinal))
                {
                    body = text;
                }
            }
            catch (Exception e) when (e is SocketException or IOException or TimeoutException)
            {
            }
            if (body is null)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
            }
        }
        ProcessResult r = await run;
        Assert.True(body is not null, $"no response through --publish\n{NetRun.Describe(r)}");
        Assert.EndsWith("published", body!.TrimEnd());
    }

    [Fact]
    public async Task PublishedUdpPortRelaysBothWays()
    {
        int hostPort = LoopbackPort.Free();
        // In the namespace: answer one datagram on 9999 with its upper-cased payload.
        Task<ProcessResult> run = NetRun.RunAsync(["--publish", $"{hostPort}:9999/udp"],
            "python3 -c \"import socket; s=socket.socket(2,2); s.bind(('0.0.0.0',9999)); s.settimeout(20); d,a=s.recvfrom(100); s.sendto(d.upper(),a); print('FROM', a[0])\"",
            Timeout);
        using var udp = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        string? reply = null;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (reply is null && DateTime.UtcNow < deadline && !run.IsCompleted)
        {
            await udp.SendAsync("ping"u8.ToArray(), new IPEndPoint(IPAddress.Loopback, hostPort), TestContext.Current.CancellationToken);
            using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
            cts.CancelAfter(300);
            try
            {
                UdpReceiveResult r = await udp.ReceiveAsync(cts.Token);
                reply = Encoding.ASCII.GetString(r.Buffer);
            }
            catch (OperationCanceledException)
            {
            }
        }
        ProcessResult result = await run;
        Assert.True(reply == "PING", $"reply {reply ?? "(none)"}\n{NetRun.Describe(result)}");
        Assert.Contains("FROM 192.168.65.2", result.StandardOutput);
    }

    [Fact]
    public async Task PcapIsReadableByTshark()
    {
        string pcap = Path.Combine(Path.GetTempPath(), $"kit-{Guid.NewGuid():N}.pcap");
        try
        {
            ProcessResult r = await NetRun.RunAsync(["--pcap", pcap], "busybox ping -c 1 -W 5 192.168.65.1", Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            var start = new ProcessStartInfo("tshark") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (string a in new[] { "-r", pcap, "-Y", "icmp", "-T", "fields", "-e", "ip.src", "-e", "ip.dst", "-e", "icmp.type" })
            {
                start.ArgumentList.Add(a);
            }
            using Process t = Process.Start(start)!;
            string output = await t.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            await t.WaitForExitAsync(TestContext.Current.CancellationToken);
            Assert.True(t.ExitCode == 0, await t.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken));
            Assert.Contains("192.168.65.3\t192.168.65.1\t8", output);
            Assert.Contains("192.168.65.1\t192.168.65.3\t0", output);
        }
        finally
        {
            File.Delete(pcap);
        }
    }

    [Fact]
    public async Task SynFloodToClosedAndSlowPortsAndUdpSprayLeaveTheGatewayResponsiveAndBounded()
    {
        // From inside the namespace: 10,000 non-blocking connects to closed host ports, 2,000 to a "slow" host port
        // (a listener with a tiny backlog that never accepts, so the host's connects hang), and datagrams from 5,000
        // source ports. Then the gateway must still answer ping and hold bounded descriptors and memory ($PPID is
        // kit: `ip netns exec` replaces itself with the command).
        using var slow = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        slow.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        slow.Listen(1);
        int slowPort = ((IPEndPoint)slow.LocalEndPoint!).Port;
        string py = string.Join('\n',
            "import socket, os, sys, time",
            "ppid, slow = int(sys.argv[1]), int(sys.argv[2])",
            "fds = lambda: len(os.listdir(f'/proc/{ppid}/fd'))",
            "rss = lambda: int([l for l in open(f'/proc/{ppid}/status') if l.startswith('VmRSS:')][0].split()[1])",
            "base = fds()",
            "socks = []",
            "def connect(port):",
            "    global socks",
            "    s = socket.socket(); s.setblocking(False)",
            "    try: s.connect(('192.168.65.2', port))",
            "    except BlockingIOError: pass",
            "    socks.append(s)",
            "    if len(socks) > 500: [x.close() for x in socks]; socks = []",
            "for i in range(10000): connect(1 + (i % 900))",
            "for i in range(2000): connect(slow)",
            "peak = fds()",
            "for i in range(5000):",
            "    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.sendto(b'x', ('192.168.65.2', 9)); u.close()",
            "[x.close() for x in socks]",
            "time.sleep(1)",
            "print(f'FDS base={base} peak={peak} after={fds()} rss_kib={rss()}')");
        string file = Path.Combine(Path.GetTempPath(), $"kit-flood-{Guid.NewGuid():N}.py");
        File.WriteAllText(file, py);
        try
        {
            ProcessResult r = await NetRun.RunAsync([], $"python3 {file} $PPID {slowPort} && busybox ping -c 1 -W 5 192.168.65.1", Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            Assert.Contains("1 packets received", r.StandardOutput);
            string line = r.StandardOutput.Split('\n').First(l => l.StartsWith("FDS ", StringComparison.Ordinal));
            int Field(string name) => int.Parse(line.Split(name + "=")[1].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            // UDP NAT holds at most 1,024 flows and host connects in flight are capped; refused connects hold nothing.
            Assert.True(Field("after") <= Field("base") + 1400, line);
            Assert.True(Field("peak") <= Field("base") + 1400, line);
            // Bounded memory: the whole gateway process stays far below what 17,000 unbounded flows would take.
            Assert.True(Field("rss_kib") < 400 * 1024, line);
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public async Task ExitCodeOfTheCommandIsReturned()
    {
        ProcessResult r = await NetRun.RunAsync([], "exit 7", Timeout);
        Assert.Equal(7, r.ExitCode);
    }

    /// <summary>
    /// docker run's exit codes (issue 14): 127 for a command that is not found, 126 for one that cannot be executed, 125
    /// for kit's own failure, each with one line and nothing left behind (no namespace is made for them).
    /// </summary>
    [Theory]
    [InlineData(127, "kit: kit-no-such-command: command not found", "kit-no-such-command")]
    [InlineData(127, "kit: /nonexistent/tool: no such file", "/nonexistent/tool")]
    [InlineData(126, "kit: /proc/version: permission denied (not an executable file)", "/proc/version")] // 0444 on every kernel (a fresh machine had /etc/hostname 0755)
    [InlineData(126, "kit: /etc: permission denied (not an executable file)", "/etc")]
    [InlineData(125, "kit: --mtu must be between 576 and 65520, got 5", "--mtu", "5", "--", "true")]
    [InlineData(125, "kit: Cannot parse argument 'x' for option '--mtu' as expected type 'System.Int32'.", "--mtu", "x", "--", "true")]
    [InlineData(125, "kit: unrecognized option '--bogus' (the command goes after --)", "--bogus", "--", "true")]
    public async Task ExitCodesFollowDockerRun(int code, string message, params string[] args)
    {
        string[] argv = args.Contains("--") ? ["net", "run", .. args] : ["net", "run", "--", .. args];
        ProcessResult r = await ProcessRunner.RunAsync(KitCli.ExecutablePath, argv, Timeout, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(r.ExitCode == code, NetRun.Describe(r));
        Assert.Equal(message, r.StandardError.Trim());
    }
}
