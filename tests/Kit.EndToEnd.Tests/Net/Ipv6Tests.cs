using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// IPv6 on the guest link (issue 18, items 2 to 4) with the Linux kernel as the guest: a `kit net run` namespace
/// configures itself from the gateway's Router Advertisement (SLAAC, default route, RDNSS), pings the gateway and the
/// host alias over IPv6, resolves through [gateway]:53 (busybox nslookup; the upstream is a server this test runs on
/// 127.0.0.1), and reaches servers this test runs on the host's [::1] through the host alias's IPv6 address (NAT66):
/// wget, iperf3 -6 both ways, DNS over UDP, echo, a refused port, and a name with A and AAAA fetched through both
/// families. The only destinations are the gateway's own addresses and the host's loopback (the machine has an IPv6
/// default route, so no test names an address outside: NAT66 would carry it).
/// </summary>
[Trait("Tier", "Real")]
public sealed class Ipv6Tests : IDisposable
{
    private const string Gateway6 = "fd00:6b69:7400::1";
    private const string Host6 = "fd00:6b69:7400::2";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-ipv6-").FullName;

    public Ipv6Tests() => NetRun.RequirePrerequisites();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task TheKernelAutoconfiguresPingsResolvesAndIsRefusedFast()
    {
        Assert.True(File.Exists("/usr/bin/rdisc6"), "rdisc6 (Debian ndisc6) is missing (./test installs it)");
        using var dns = new TinyDnsServer();
        string pcap = Path.Combine(_dir, "v6.pcap");
        string script = string.Join("echo ===; ", [
            "sysctl net.ipv6.conf.eth0.accept_ra net.ipv6.conf.eth0.disable_ipv6; " + NetRun.WaitForSlaac("fd00:6b69:7400:") + "ip -6 addr show dev eth0; ",
            "ip -6 route show default; ",
            $"busybox ping6 -c 3 -W 5 {Gateway6}; ",
            $"busybox ping6 -c 3 -W 5 {Host6}; ",
            $"busybox nslookup -type=AAAA host.internal {Gateway6}; ",
            $"busybox nslookup {TinyDnsServer.Name} {Gateway6}; ",
            // The RA (RDNSS included) as a client in the namespace receives it.
            "rdisc6 -1 -w 2000 eth0; ",
            // ::127.0.0.1 (IPv4-compatible, RFC 4291 §2.5.5.1) is not carried: the gateway refuses it itself, at once.
            "curl -sS -o /dev/null -m 10 -w 'curl %{time_total}\\n' 'http://[::7f00:1]:80/'; echo \"curl exit $?\"",
        ]);
        ProcessResult r = await NetRun.RunAsync(["--dns-upstream", dns.EndPoint.ToString(), "--pcap", pcap], script, Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(parts.Length == 8, NetRun.Describe(r));
        // SLAAC (RFC 4862): an address in the prefix, from the kernel's own interface identifier, DAD done.
        Assert.Matches(@"inet6 fd00:6b69:7400:0?:?[0-9a-f:]+/64 scope global", parts[0]);
        Assert.DoesNotContain("tentative", parts[0]);
        // The default route via the gateway's link-local address (fe80:: and its modified EUI-64).
        Assert.Contains("default via fe80::f416:36ff:febc:f9c6 dev eth0", parts[1]);
        Assert.Contains("3 packets received", parts[2]);
        Assert.Contains("3 packets received", parts[3]);
        // The host names answer AAAA with the host alias's IPv6 address (NAT66 carries it to the host).
        Assert.Contains(Host6, parts[4]);
        Assert.Contains(TinyDnsServer.Address.ToString(), parts[5]);
        Assert.Contains($"{TinyDnsServer.Name}/1", dns.Queries);
        Assert.Contains($"Recursive DNS server     : {Gateway6}", parts[6]);
        Assert.Contains("fd00:6b69:7400::/64", parts[6]);
        // The connect is refused by the gateway's RST at once, not left to time out.
        Assert.Contains("curl exit 7", parts[7]);
        double seconds = double.Parse(parts[7].Split("curl ")[1].Trim(), CultureInfo.InvariantCulture);
        Assert.True(seconds < 1, $"the refused connect took {seconds} s\n{NetRun.Describe(r)}");
        // The exchange as captured decodes in tshark: the RA, the echoes and the DNS over IPv6.
        ProcessResult t = await ProcessRunner.RunAsync("tshark", ["-r", pcap, "-Y", "icmpv6.type == 134 || icmpv6.type == 129 || (dns && ipv6)", "-T", "fields",
            "-e", "icmpv6.type", "-e", "icmpv6.opt.rdnss", "-e", "dns.qry.name"], TimeSpan.FromSeconds(60),
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(t.ExitCode == 0, t.ToString());
        Assert.Contains($"134\t{Gateway6}", t.StandardOutput);
        Assert.Contains("129\t", t.StandardOutput);
        Assert.Contains("host.internal", t.StandardOutput);
    }

    [Fact]
    public async Task AConfiguredPrefixIsAdvertised()
    {
        ProcessResult r = await NetRun.RunAsync(["--ipv6-prefix", "fd12:3456:789a:1::/64"],
            NetRun.WaitForSlaac("fd12:3456:789a:1:") + "ip -6 addr show dev eth0; busybox ping6 -c 1 -W 5 fd12:3456:789a:1::1", Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains("inet6 fd12:3456:789a:1:", r.StandardOutput);
        Assert.Contains("1 packets received", r.StandardOutput);
    }

    [Fact]
    public async Task NoIpv6MeansNoAdvertisementAndNoAnswer()
    {
        ProcessResult r = await NetRun.RunAsync(["--no-ipv6"],
            "sleep 3; ip -6 addr show dev eth0 scope global; echo ===; ip -6 route show default; echo ===; "
            + "rdisc6 -1 -w 1000 -r 2 eth0; echo \"rdisc6 exit $?\"; busybox ping6 -c 1 -W 2 fe80::f416:36ff:febc:f9c6%eth0; echo \"ping exit $?\"", Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(parts.Length == 3, NetRun.Describe(r));
        Assert.DoesNotContain("inet6", parts[0]);
        Assert.DoesNotContain("default", parts[1]);
        Assert.DoesNotContain("rdisc6 exit 0", parts[2]);
        Assert.Contains("ping exit 1", parts[2]);
    }

    [Fact]
    public async Task ABadPrefixIsOneClearError()
    {
        ProcessResult r = await NetRun.RunAsync(["--ipv6-prefix", "fe80::/64"], "true", Timeout);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("--ipv6-prefix", r.StandardError);
        Assert.DoesNotContain("   at ", r.StandardError);
        r = await NetRun.RunAsync(["--ipv6-prefix", "fd00::/48"], "true", Timeout);
        Assert.NotEqual(0, r.ExitCode);
        Assert.Contains("PREFIX/64", r.StandardError);
    }

    /// <summary>The host's count of ICMPv6 echo requests received (/proc/net/snmp6, Icmp6InEchos): ::1 answers them.</summary>
    private static long HostEchoesReceived()
    {
        foreach (string line in File.ReadLines("/proc/net/snmp6"))
        {
            string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (f.Length == 2 && f[0] == "Icmp6InEchos")
            {
                return long.Parse(f[1], CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException("no Icmp6InEchos in /proc/net/snmp6");
    }

    [Fact]
    public async Task TheHostAliasReachesTheHostsIpv6Loopback()
    {
        using var http = new TinyHttpServer(bind: IPAddress.IPv6Loopback);
        using var dns6 = new TinyDnsServer(new IPEndPoint(IPAddress.IPv6Loopback, 0), TinyDnsServer.Address, IPAddress.Parse("2001:db8::5"));
        int closed = FreePort6();
        long echoesBefore = HostEchoesReceived();
        string script = string.Join("echo ===; ", [
            NetRun.WaitForSlaac("fd00:6b69:7400:") + $"timeout 30 busybox wget -q -O - 'http://[{Host6}]:{http.Port}{TinyHttpServer.Path}' | md5sum; ",
            $"busybox nslookup -type=AAAA {TinyDnsServer.Name} '[{Host6}]:{dns6.EndPoint.Port}'; ",
            $"busybox ping6 -c 3 -W 5 {Host6}; ",
            $"curl -sS -o /dev/null -m 10 -w 'curl %{{time_total}}\\n' 'http://[{Host6}]:{closed}/'; echo \"curl exit $?\"",
        ]);
        ProcessResult r = await NetRun.RunAsync([], script, Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(parts.Length == 4, NetRun.Describe(r));
        // The page served on [::1], whole.
        Assert.Contains(http.Md5, parts[0]);
        Assert.Contains($"GET {TinyHttpServer.Path} HTTP/1.1", http.Requests);
        // DNS over UDP to the host alias, answered by the server on [::1].
        Assert.Contains("2001:db8::5", parts[1]);
        Assert.Contains($"{TinyDnsServer.Name}/28", dns6.Queries);
        // The echoes were answered by the host's ::1 (its counter of echo requests received grew), not by the gateway.
        Assert.Contains("3 packets received", parts[2]);
        Assert.True(HostEchoesReceived() - echoesBefore >= 3, $"the host's ::1 saw {HostEchoesReceived() - echoesBefore} echoes\n{NetRun.Describe(r)}");
        // A closed port on the host: its RST becomes the guest's, at once.
        Assert.Contains("curl exit 7", parts[3]);
        double seconds = double.Parse(parts[3].Split("curl ")[1].Trim(), CultureInfo.InvariantCulture);
        Assert.True(seconds < 1, $"the refused connect took {seconds} s\n{NetRun.Describe(r)}");
    }

    private static int FreePort6()
    {
        using var l = new TcpListener(IPAddress.IPv6Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>
    /// iperf3 -6 both ways at the default MTU (1500), and both ways IPv6 TCP crosses the TAP as segments far larger than
    /// the MTU (TUN_F_TSO6, GSO_TCPV6): the capture records each frame as the link carried it.
    /// </summary>
    [Fact]
    public async Task Iperf3OverIpv6RunsBothWaysToTheHostsLoopback()
    {
        int port = FreePort6();
        string pcap = Path.Combine(_dir, "iperf6.pcap");
        using Process server = Process.Start(new ProcessStartInfo("iperf3", ["-s", "-B", "::1", "-p", port.ToString(CultureInfo.InvariantCulture)])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        try
        {
            await Task.Delay(500, TestContext.Current.CancellationToken);
            string run = $"iperf3 -6 -c {Host6} -p {port} -t 2 -J";
            ProcessResult r = await NetRun.RunAsync(["--pcap", pcap], NetRun.WaitForSlaac("fd00:6b69:7400:") + $"{run}; echo ===; {run} -R", Timeout);
            string[] parts = r.StandardOutput.Split("===");
            Assert.True(r.ExitCode == 0 && parts.Length == 2, NetRun.Describe(r));
            foreach (string json in parts)
            {
                using var doc = JsonDocument.Parse(json);
                double bps = doc.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble();
                Assert.True(bps > 1e6, $"{bps} bit/s\n{NetRun.Describe(r)}");
            }
            ProcessResult t = await ProcessRunner.RunAsync("tshark", ["-r", pcap, "-Y", "ipv6 && tcp", "-T", "fields", "-e", "ipv6.src", "-e", "frame.len"],
                TimeSpan.FromSeconds(60), cancellationToken: TestContext.Current.CancellationToken);
            Assert.True(t.ExitCode == 0, t.ToString());
            var largest = t.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split('\t'))
                .GroupBy(f => f[0] == Host6 ? "gateway" : "guest").ToDictionary(g => g.Key, g => g.Max(f => int.Parse(f[1], CultureInfo.InvariantCulture)));
            Assert.True(largest.GetValueOrDefault("guest") > 1514 * 8 && largest.GetValueOrDefault("gateway") > 1514 * 8,
                $"largest IPv6 TCP frames: {string.Join(", ", largest)}");
        }
        finally
        {
            server.Kill();
        }
    }

    /// <summary>
    /// host.internal answers A and AAAA, and a dual-stack client takes the AAAA first; a host service that listens on
    /// 127.0.0.1 only is still reached over IPv6, because the NAT tries 127.0.0.1 when the host's ::1 refuses. curl -6
    /// forces the IPv6 path (no fallback of its own); the server sees both requests. The inspector (--ui) records the
    /// IPv6 flows and their HTTP exchanges, with the guest's and the host alias's IPv6 addresses.
    /// </summary>
    [Fact]
    public async Task TheHostNamesIpv6AddressReachesAServiceOnIpv4LoopbackOnly()
    {
        using var http4 = new TinyHttpServer(size: 4096);
        using var dns = new TinyDnsServer();
        int ui = LoopbackPort.Free();
        string ready = Path.Combine(_dir, "ready"), go = Path.Combine(_dir, "go");
        string script = NetRun.WaitForSlaac("fd00:6b69:7400:")
            + $"curl -sS -6 -m 10 -o /dev/null -w '%{{remote_ip}} %{{http_code}}\\n' http://host.internal:{http4.Port}{TinyHttpServer.Path}; "
            + $"curl -sS -m 10 -o /dev/null -w '%{{remote_ip}} %{{http_code}}\\n' http://host.docker.internal:{http4.Port}/second; "
            + $"touch {ready}; i=0; while [ ! -e {go} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done";
        Task<ProcessResult> run = NetRun.RunAsync(["--dns-upstream", dns.EndPoint.ToString(), "--ui", $"tcp://127.0.0.1:{ui}"], script, Timeout);
        for (int i = 0; i < 600 && !File.Exists(ready) && !run.IsCompleted; i++)
        {
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        string exchanges = "";
        try
        {
            using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(10) };
            for (int i = 0; i < 50 && File.Exists(ready); i++)
            {
                exchanges = await api.GetStringAsync("/api/http", TestContext.Current.CancellationToken);
                if (exchanges.Contains("/second", StringComparison.Ordinal) && exchanges.Contains(TinyHttpServer.Path, StringComparison.Ordinal))
                {
                    break;
                }
                await Task.Delay(100, TestContext.Current.CancellationToken);
            }
        }
        finally
        {
            await File.WriteAllTextAsync(go, "", TestContext.Current.CancellationToken);
        }
        ProcessResult r = await run;
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        // Both fetches went over IPv6 (the default order prefers the ULA), and both reached the IPv4-only server.
        Assert.Equal([$"{Host6} 200", $"{Host6} 200"], r.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Equal(2, http4.Requests.Count);
        using JsonDocument doc = JsonDocument.Parse(exchanges.Length > 0 ? exchanges : "[]");
        JsonElement[] seen = [.. doc.RootElement.EnumerateArray().Where(x => x.GetProperty("remote").GetString() == Host6)];
        Assert.True(seen.Length == 2 && seen.All(x => x.GetProperty("status").GetInt32() == 200 && x.GetProperty("guest").GetString()!.StartsWith("fd00:6b69:7400:", StringComparison.Ordinal)),
            $"the inspector's IPv6 exchanges:\n{exchanges}");
    }

    [Fact]
    public async Task ADualStackNameIsFetchedThroughBothFamilies()
    {
        const string Name = TinyDnsServer.Name;
        // The name's A is the host alias 192.168.65.2 and its AAAA the host alias's IPv6 address: one page, served on the
        // host's 127.0.0.1 and [::1] at the same port, each listener counting its own requests.
        using var http4 = new TinyHttpServer(size: 4096);
        using var http6 = new TinyHttpServer(size: 4096, bind: IPAddress.IPv6Loopback, port: http4.Port);
        using var dns = new TinyDnsServer(new IPEndPoint(IPAddress.Loopback, 0), IPAddress.Parse("192.168.65.2"), IPAddress.Parse(Host6));
        string url = $"http://{Name}:{http4.Port}{TinyHttpServer.Path}";
        ProcessResult r = await NetRun.RunAsync(["--dns-upstream", dns.EndPoint.ToString()],
            NetRun.WaitForSlaac("fd00:6b69:7400:") + $"curl -sS -4 -m 10 -o /dev/null -w '%{{remote_ip}}\\n' {url}; curl -sS -6 -m 10 -o /dev/null -w '%{{remote_ip}}\\n' {url}", Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains("192.168.65.2", r.StandardOutput);
        Assert.Contains(Host6, r.StandardOutput);
        Assert.Single(http4.Requests);
        Assert.Single(http6.Requests);
        Assert.Contains($"{Name}/1", dns.Queries);
        Assert.Contains($"{Name}/28", dns.Queries);
    }

    // In the namespace: servers on the namespace's IPv6 addresses only (IPV6_V6ONLY), so only a publish that opens to
    // the guest's IPv6 address reaches them. One HTTP response on 8080 and one datagram answer on 9999, each naming the
    // peer the server saw.
    private const string Ipv6OnlyServers = """
        import socket, threading
        def v6only(kind):
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(60)
            return s
        def udp():
            s = v6only(socket.SOCK_DGRAM)
            s.bind(("::", 9999))
            d, a = s.recvfrom(100)
            s.sendto(d.upper() + b" " + a[0].encode(), a)
            print("udp peer", a[0], flush=True)
        t = threading.Thread(target=udp)
        t.start()
        s = v6only(socket.SOCK_STREAM)
        s.bind(("::", 8080))
        s.listen(4)
        c, a = s.accept()
        c.recv(4096)
        body = ("published to " + c.getsockname()[0] + " from " + a[0]).encode()
        c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        c.close()
        print("tcp peer", a[0], flush=True)
        t.join()
        """;

    /// <summary>
    /// <c>--publish [::1]:H:G</c> (TCP and UDP) opens to the guest's IPv6 address, from the host alias's IPv6 address, once
    /// the gateway has learned the guest's address (from its DAD or its packets): host curl and a host UDP client reach
    /// servers that listen on the namespace's IPv6 addresses only. Until then a publish goes to the guest's IPv4
    /// address, so the host side retries (as a client of a service still starting would).
    /// </summary>
    [Fact]
    public async Task PortsPublishedOnTheHostsIpv6LoopbackReachTheGuestsIpv6Address()
    {
        int tcpPort = LoopbackPort.Free();
        int udpPort = LoopbackPort.Free();
        string servers = Path.Combine(_dir, "servers.py");
        await File.WriteAllTextAsync(servers, Ipv6OnlyServers, TestContext.Current.CancellationToken);
        Task<ProcessResult> run = NetRun.RunAsync(["--publish", $"[::1]:{tcpPort}:8080", "--publish", $"[::1]:{udpPort}:9999/udp"],
            NetRun.WaitForSlaac("fd00:6b69:7400:") + $"python3 {servers}", Timeout);
        string? body = null;
        string? reply = null;
        string lastCurl = "";
        using var udp = new UdpClient(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(40);
        while ((body is null || reply is null) && DateTime.UtcNow < deadline && !run.IsCompleted)
        {
            if (reply is null)
            {
                await udp.SendAsync("ping"u8.ToArray(), new IPEndPoint(IPAddress.IPv6Loopback, udpPort), TestContext.Current.CancellationToken);
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
                cts.CancelAfter(300);
                try
                {
                    reply = System.Text.Encoding.ASCII.GetString((await udp.ReceiveAsync(cts.Token)).Buffer);
                }
                catch (OperationCanceledException)
                {
                }
            }
            if (body is null)
            {
                ProcessResult curl = await ProcessRunner.RunAsync("curl", ["-g", "-sS", "-m", "5", $"http://[::1]:{tcpPort}/"], TimeSpan.FromSeconds(15),
                    cancellationToken: TestContext.Current.CancellationToken);
                lastCurl = curl.ToString();
                body = curl.ExitCode == 0 && curl.StandardOutput.Contains("published", StringComparison.Ordinal) ? curl.StandardOutput : null;
            }
            if (body is null || reply is null)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
            }
        }
        ProcessResult r = await run;
        Assert.True(body is not null, $"no response through --publish [::1]:{tcpPort}:8080 (last curl: {lastCurl})\n{NetRun.Describe(r)}");
        // The server saw the host alias's IPv6 address as the peer, on the guest's in-prefix address.
        Assert.Matches($@"^published to fd00:6b69:7400:[0-9a-f:]+ from {Host6}$", body!.Trim());
        Assert.True(reply == $"PING {Host6}", $"reply {reply ?? "(none)"} through --publish [::1]:{udpPort}:9999/udp\n{NetRun.Describe(r)}");
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains($"tcp peer {Host6}", r.StandardOutput);
        Assert.Contains($"udp peer {Host6}", r.StandardOutput);
    }

    /// <summary>
    /// A guest service that listens on IPv4 only is still reached through a port published on [::1] once the guest has
    /// an IPv6 address: the guest's kernel refuses the IPv6 SYN, and the gateway opens the connection again to the
    /// guest's IPv4 address, so the host client never sees the refusal.
    /// </summary>
    [Fact]
    public async Task APortPublishedOnIpv6LoopbackReachesAGuestServiceListeningOnIpv4Only()
    {
        int tcpPort = LoopbackPort.Free();
        // In the namespace: one HTTP response from an AF_INET socket on 0.0.0.0:8080, naming the peer it saw.
        string server = "python3 -c \"import socket; s=socket.socket(socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            + "s.bind(('0.0.0.0',8080)); s.listen(); s.settimeout(30); c,a=s.accept(); c.recv(1000); b=('v4 from '+a[0]).encode(); "
            + "c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: %d\\r\\n\\r\\n' % len(b) + b); c.close()\"";
        Task<ProcessResult> run = NetRun.RunAsync(["--publish", $"[::1]:{tcpPort}:8080"], NetRun.WaitForSlaac("fd00:6b69:7400:") + server, Timeout);
        string? body = null;
        string lastCurl = "";
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(40);
        while (body is null && DateTime.UtcNow < deadline && !run.IsCompleted)
        {
            ProcessResult curl = await ProcessRunner.RunAsync("curl", ["-g", "-sS", "-m", "5", $"http://[::1]:{tcpPort}/"], TimeSpan.FromSeconds(15),
                cancellationToken: TestContext.Current.CancellationToken);
            lastCurl = curl.ToString();
            body = curl.ExitCode == 0 && curl.StandardOutput.Contains("v4 from", StringComparison.Ordinal) ? curl.StandardOutput : null;
            if (body is null)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
            }
        }
        ProcessResult r = await run;
        Assert.True(body is not null, $"no response through --publish [::1]:{tcpPort}:8080 (last curl: {lastCurl})\n{NetRun.Describe(r)}");
        Assert.Equal("v4 from 192.168.65.2", body!.Trim());
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
    }

    /// <summary>
    /// With IPv6 off (<c>--no-ipv6</c>) a port published on [::1] opens to the guest's IPv4 address from 192.168.65.2, as
    /// it does before the gateway knows a guest's IPv6 address: servers bound to 0.0.0.0 only are reached.
    /// </summary>
    [Fact]
    public async Task WithoutIpv6PortsPublishedOnTheHostsIpv6LoopbackReachTheGuestsIpv4Address()
    {
        int tcpPort = LoopbackPort.Free();
        int udpPort = LoopbackPort.Free();
        // In the namespace: answer one datagram on 9999 with its upper-cased payload and its peer (in the background),
        // and serve one HTTP response on 8080 with busybox nc.
        string script = "python3 -c \"import socket; s=socket.socket(2,2); s.bind(('0.0.0.0',9999)); s.settimeout(30); d,a=s.recvfrom(100); s.sendto(d.upper()+b' '+a[0].encode(),a)\" & "
            + "printf 'HTTP/1.0 200 OK\\r\\nContent-Length: 9\\r\\n\\r\\npublished' | busybox nc -l -p 8080; wait";
        Task<ProcessResult> run = NetRun.RunAsync(["--no-ipv6", "--publish", $"[::1]:{tcpPort}:8080", "--publish", $"[::1]:{udpPort}:9999/udp"], script, Timeout);
        string? body = null;
        string? reply = null;
        using var udp = new UdpClient(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while ((body is null || reply is null) && DateTime.UtcNow < deadline && !run.IsCompleted)
        {
            if (reply is null)
            {
                await udp.SendAsync("ping"u8.ToArray(), new IPEndPoint(IPAddress.IPv6Loopback, udpPort), TestContext.Current.CancellationToken);
                using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
                cts.CancelAfter(300);
                try
                {
                    reply = System.Text.Encoding.ASCII.GetString((await udp.ReceiveAsync(cts.Token)).Buffer);
                }
                catch (OperationCanceledException)
                {
                }
            }
            if (body is null)
            {
                try
                {
                    using var client = new TcpClient(AddressFamily.InterNetworkV6);
                    await client.ConnectAsync(IPAddress.IPv6Loopback, tcpPort, TestContext.Current.CancellationToken);
                    NetworkStream stream = client.GetStream();
                    await stream.WriteAsync("GET / HTTP/1.0\r\n\r\n"u8.ToArray(), TestContext.Current.CancellationToken);
                    using var reader = new StreamReader(stream);
                    string text = await reader.ReadToEndAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
                    body = text.Contains("published", StringComparison.Ordinal) ? text : null;
                }
                catch (Exception e) when (e is SocketException or IOException or TimeoutException)
                {
                }
            }
            if (body is null || reply is null)
            {
                await Task.Delay(200, TestContext.Current.CancellationToken);
            }
        }
        ProcessResult r = await run;
        Assert.True(body is not null, $"no response through --publish [::1]:{tcpPort}:8080\n{NetRun.Describe(r)}");
        Assert.EndsWith("published", body!.TrimEnd());
        Assert.True(reply == "PING 192.168.65.2", $"reply {reply ?? "(none)"} through --publish [::1]:{udpPort}:9999/udp\n{NetRun.Describe(r)}");
    }

    [Fact]
    public async Task AnUpstreamOnTheHostsIpv6LoopbackAnswersTheGuestsQueries()
    {
        // --dns-upstream [::1]:PORT: the gateway's forwarder asks a server this test runs on the host's ::1, for a guest
        // asking over IPv4 (192.168.65.1) and over IPv6 (the gateway's ULA).
        using var dns6 = new TinyDnsServer(new IPEndPoint(IPAddress.IPv6Loopback, 0), TinyDnsServer.Address, IPAddress.Parse("2001:db8::5"));
        string script = NetRun.WaitForSlaac("fd00:6b69:7400:") + $"busybox nslookup {TinyDnsServer.Name} 192.168.65.1; echo ===; "
            + $"busybox nslookup -type=AAAA {TinyDnsServer.Name} {Gateway6}";
        ProcessResult r = await NetRun.RunAsync(["--dns-upstream", $"[::1]:{dns6.EndPoint.Port}"], script, Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(r.ExitCode == 0 && parts.Length == 2, NetRun.Describe(r));
        Assert.Contains(TinyDnsServer.Address.ToString(), parts[0]);
        Assert.Contains("2001:db8::5", parts[1]);
        Assert.Contains($"{TinyDnsServer.Name}/1", dns6.Queries);
        Assert.Contains($"{TinyDnsServer.Name}/28", dns6.Queries);
    }
}
