namespace Kit.EndToEnd.Tests.NetGuest;

/// <summary>
/// A real Linux guest (QEMU TCG, busybox clients) uses `kit net serve` as its whole network: udhcpc's lease,
/// nslookup through the gateway's DNS forwarder to the test's upstream on 127.0.0.1, wget of a page served on the
/// host's 127.0.0.1 via 192.168.65.2, ping of the gateway; and the --pcap capture of that run reads in tshark.
/// One boot per transport (the fixture); each fact checks one thing of it.
/// </summary>
public abstract class QemuGuestNetworkTests<TRun>(TRun run, ITestOutputHelper output)
    where TRun : GuestRun
{
    protected TRun Run { get; } = run;

    private string Explain(string what) => $"{what}\n--- guest output ---\n{Run.Output}\n--- kit net serve ---\n{Run.KitOutput}";

    [Fact]
    public void Udhcpc_gets_the_gateway_lease()
    {
        output.WriteLine(Run.Timing);
        string dhcp = Run.Section("dhcp");
        output.WriteLine(dhcp);
        Assert.True(dhcp.EndsWith("rc=0", StringComparison.Ordinal), Explain("udhcpc failed"));
        Assert.Contains("lease of 192.168.65.3 obtained from 192.168.65.1", dhcp, StringComparison.Ordinal);
        Assert.Matches(@"inet 192\.168\.65\.3/24 ", Run.Section("addr"));
        Assert.Contains("default via 192.168.65.1 dev eth0", Run.Section("route"), StringComparison.Ordinal);
        string resolv = Run.Section("resolv");
        Assert.Contains("nameserver 192.168.65.1", resolv, StringComparison.Ordinal);
        Assert.DoesNotContain("nameserver 10.", resolv, StringComparison.Ordinal);
    }

    [Fact]
    public void Slaac_gives_an_address_in_the_prefix_and_ping6_reaches_the_gateway()
    {
        string v6 = Run.Section("ipv6");
        output.WriteLine(v6);
        Assert.Matches(@"inet6 fd00:6b69:7400:[0-9a-f:]+/64 scope global", v6);
        Assert.Contains("default via fe80::f416:36ff:febc:f9c6 dev eth0", v6, StringComparison.Ordinal);
        Assert.True(v6.EndsWith("rc=0", StringComparison.Ordinal), Explain("ping6 of the gateway failed"));
    }

    [Fact]
    public void Nslookup_resolves_through_the_forwarder_to_the_test_upstream()
    {
        string a = Run.Section("dns-a");
        output.WriteLine(a);
        Assert.True(a.EndsWith("rc=0", StringComparison.Ordinal), Explain("nslookup of the fixed name failed"));
        Assert.Matches(@"Address:?\s+10\.11\.12\.13", a);
        Assert.Contains("192.168.65.1", a, StringComparison.Ordinal); // the server it asked
        Assert.Contains($"{TinyDnsServer.Name}/1", Run.Dns.Queries);
    }

    [Fact]
    public void Nslookup_of_a_missing_name_gives_nxdomain()
    {
        string nx = Run.Section("dns-nx");
        output.WriteLine(nx);
        Assert.Contains("NXDOMAIN", nx, StringComparison.Ordinal);
        Assert.False(nx.EndsWith("rc=0", StringComparison.Ordinal), Explain("nslookup of a missing name succeeded"));
        Assert.Contains($"missing.{TinyDnsServer.Name}/1", Run.Dns.Queries);
    }

    [Fact]
    public void Host_docker_internal_is_the_host_address()
    {
        string h = Run.Section("dns-host");
        output.WriteLine(h);
        Assert.True(h.EndsWith("rc=0", StringComparison.Ordinal), Explain("nslookup host.docker.internal failed"));
        Assert.Matches(@"Address:?\s+192\.168\.65\.2", h);
        Assert.DoesNotContain(Run.Dns.Queries, q => q.StartsWith("host.docker.internal/1", StringComparison.Ordinal)); // built in, not forwarded
    }

    [Fact]
    public void Wget_fetches_a_page_from_the_hosts_loopback_via_192_168_65_2()
    {
        string http = Run.Section("http");
        output.WriteLine(http);
        Assert.True(http.StartsWith("rc=0", StringComparison.Ordinal), Explain("wget failed"));
        Assert.Contains(Run.Http.Md5 + "  /tmp/page", http, StringComparison.Ordinal);
        Assert.EndsWith(Run.Http.Body.Length.ToString(System.Globalization.CultureInfo.InvariantCulture), http, StringComparison.Ordinal);
        Assert.Contains($"GET {TinyHttpServer.Path} HTTP/1.1", Run.Http.Requests);
    }

    [Fact]
    public void Udp_to_192_168_65_2_reaches_a_server_on_the_hosts_loopback()
    {
        // nslookup straight to the test's DNS server via the host address: UDP NAT, not the forwarder.
        string udp = Run.Section("udp-nat");
        output.WriteLine(udp);
        Assert.True(udp.EndsWith("rc=0", StringComparison.Ordinal), Explain("nslookup via UDP NAT to 192.168.65.2 failed"));
        Assert.Matches(@"Address:?\s+10\.11\.12\.13", udp);
    }

    [Fact]
    public void Tcp_to_a_closed_host_port_is_refused()
    {
        string refused = Run.Section("refused");
        output.WriteLine(refused);
        Assert.Contains("Connection refused", refused, StringComparison.Ordinal);
        Assert.False(refused.EndsWith("rc=0", StringComparison.Ordinal));
        Assert.False(refused.EndsWith("rc=143", StringComparison.Ordinal), Explain("wget to a closed port hung until timeout killed it"));
    }

    [Fact]
    public void Ping_of_the_gateway_is_answered()
    {
        string ping = Run.Section("ping");
        output.WriteLine(ping);
        Assert.True(ping.EndsWith("rc=0", StringComparison.Ordinal), Explain("ping failed"));
        Assert.Contains("2 packets transmitted, 2 packets received", ping, StringComparison.Ordinal);
    }

    [Fact]
    public void Pcap_of_the_run_shows_dhcp_and_dns_in_tshark()
    {
        output.WriteLine($"kit exit {Run.KitExitCode}, pcap {Run.PcapBytes} bytes");
        Assert.True(Run.KitExitCode == 0, Explain($"kit net serve exited {Run.KitExitCode} on SIGTERM"));
        Assert.True(Run.PcapBytes > 24, Explain($"pcap is {Run.PcapBytes} bytes"));
        string t = Run.Tshark;
        string[] lines = t.Split('\n');
        output.WriteLine(string.Join('\n', lines.Where(l => l.Contains("DHCP", StringComparison.Ordinal) || l.Contains("DNS", StringComparison.Ordinal))));
        Assert.StartsWith("exit 0", t, StringComparison.Ordinal);
        foreach (string dhcp in (string[])["DHCP Discover", "DHCP Offer", "DHCP Request", "DHCP ACK"])
        {
            Assert.True(lines.Any(l => l.Contains(dhcp, StringComparison.Ordinal)), $"tshark shows no '{dhcp}'\n{Kit.Testing.Text.Tail(t, 4000)}");
        }
        Assert.Contains(lines, l => l.Contains("Standard query response", StringComparison.Ordinal) && l.Contains(TinyDnsServer.Name, StringComparison.Ordinal)
            && l.Contains("10.11.12.13", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.Contains("No such name", StringComparison.Ordinal) && l.Contains("missing." + TinyDnsServer.Name, StringComparison.Ordinal));
        Assert.Contains(lines, l => l.Contains("192.168.65.3", StringComparison.Ordinal) && l.Contains("192.168.65.1", StringComparison.Ordinal) && l.Contains("DNS", StringComparison.Ordinal));
    }
}

/// <summary>The guest on QEMU <c>-netdev stream</c> (4-byte big-endian framing) to `kit net serve --qemu`.</summary>
[Trait("Tier", "Real")]
public sealed class QemuStreamGuestTests(StreamGuestRun run, ITestOutputHelper output)
    : QemuGuestNetworkTests<StreamGuestRun>(run, output), IClassFixture<StreamGuestRun>;

/// <summary>The guest on QEMU <c>-netdev dgram</c> (one frame per datagram) to `kit net serve --dgram`.</summary>
[Trait("Tier", "Real")]
public sealed class QemuDgramGuestTests(DgramGuestRun run, ITestOutputHelper output)
    : QemuGuestNetworkTests<DgramGuestRun>(run, output), IClassFixture<DgramGuestRun>;

/// <summary>The guest on QEMU <c>-netdev stream</c> to `kit net serve --qemu --mtu 65520`.</summary>
[Trait("Tier", "Real")]
public sealed class QemuStreamJumboGuestTests(JumboStreamGuestRun run, ITestOutputHelper output)
    : QemuGuestNetworkTests<JumboStreamGuestRun>(run, output), IClassFixture<JumboStreamGuestRun>
{
    private readonly ITestOutputHelper _output = output;

    [Fact]
    public void The_dhcp_mtu_option_sets_the_guest_link_mtu()
    {
        Assert.Contains("mtu 65520 ", Run.Section("addr"), StringComparison.Ordinal);
    }

    [Fact]
    public void The_fetch_crossed_the_link_in_frames_larger_than_1514_bytes()
    {
        // tshark's default summary has a Length column right after the protocol.
        int largest = System.Text.RegularExpressions.Regex.Matches(Run.Tshark, @" (?:TCP|HTTP) (\d+) ")
            .Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture))
            .DefaultIfEmpty(0).Max();
        _output.WriteLine($"largest TCP frame in the capture: {largest} bytes");
        Assert.InRange(largest, 1515, 65520 + 14);
    }
}

/// <summary>
/// The guest's virtio-net over vhost-user to `kit net serve --vhost-user` (QEMU 7.2 the frontend, HyperKit's
/// virtio-net model and VPNKit the backend, offloads on).
/// </summary>
[Trait("Tier", "Real")]
public sealed class QemuVhostUserGuestTests(VhostUserGuestRun run, ITestOutputHelper output)
    : QemuGuestNetworkTests<VhostUserGuestRun>(run, output), IClassFixture<VhostUserGuestRun>;
