using System.Globalization;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// IPv6 on the guest link (issue 18, items 2 and 4) with the Linux kernel as the guest: a `kit net run` namespace
/// configures itself from the gateway's Router Advertisement (SLAAC, default route, RDNSS), pings the gateway and the
/// host alias over IPv6, resolves through [gateway]:53 (busybox nslookup; the upstream is a server this test runs on
/// 127.0.0.1), and a TCP connect to an address outside fails at once. The only IPv6 destinations are the gateway's
/// own addresses and 2001:db8::1 (documentation space, RFC 3849), which the gateway refuses itself.
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

    /// <summary>Waits (bounded, 10 s) until eth0 has a global address that is no longer tentative (DAD done).</summary>
    private static string WaitForSlaac(string prefix) =>
        $"for i in $(seq 1 100); do ip -6 addr show dev eth0 scope global | grep -q '{prefix}' && "
        + "! ip -6 addr show dev eth0 scope global | grep -q tentative && break; sleep 0.1; done; ";

    [Fact]
    public async Task TheKernelAutoconfiguresPingsResolvesAndIsRefusedFast()
    {
        Assert.True(File.Exists("/usr/bin/rdisc6"), "rdisc6 (Debian ndisc6) is missing (./test installs it)");
        using var dns = new TinyDnsServer();
        string pcap = Path.Combine(_dir, "v6.pcap");
        string script = string.Join("echo ===; ", [
            "sysctl net.ipv6.conf.eth0.accept_ra net.ipv6.conf.eth0.disable_ipv6; " + WaitForSlaac("fd00:6b69:7400:") + "ip -6 addr show dev eth0; ",
            "ip -6 route show default; ",
            $"busybox ping6 -c 3 -W 5 {Gateway6}; ",
            $"busybox ping6 -c 3 -W 5 {Host6}; ",
            $"busybox nslookup -type=AAAA host.internal {Gateway6}; ",
            $"busybox nslookup {TinyDnsServer.Name} {Gateway6}; ",
            // The RA (RDNSS included) as a client in the namespace receives it.
            "rdisc6 -1 -w 2000 eth0; ",
            "curl -sS -o /dev/null -m 10 -w 'curl %{time_total}\\n' 'http://[2001:db8::1]:80/'; echo \"curl exit $?\"",
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
        // No AAAA for the host names until the host alias's IPv6 address reaches the host (NAT66).
        Assert.DoesNotContain(Host6, parts[4]);
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
            WaitForSlaac("fd12:3456:789a:1:") + "ip -6 addr show dev eth0; busybox ping6 -c 1 -W 5 fd12:3456:789a:1::1", Timeout);
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
}
