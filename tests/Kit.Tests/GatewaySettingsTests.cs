using System.Net;
using System.Reflection;
using Kit.Cli;
using Kit.Cli.Commands;
using Kit.VpnKit;

namespace Kit.Tests;

/// <summary>
/// The one mapping from the gateway's command-line options to <see cref="VpnKitServerOptions"/>, shared by
/// <c>kit net run</c>, <c>kit net serve</c> and <c>kit vm run --net vpnkit</c>.
/// </summary>
public sealed class GatewaySettingsTests
{
    /// <summary>Server options no command line sets (they keep VPNKit's defaults everywhere).</summary>
    private static readonly string[] NotFromTheCommandLine = [nameof(VpnKitServerOptions.HostNames)];

    [Fact]
    public void Parse_reads_every_option()
    {
        GatewaySettings s = GatewaySettings.Parse(9000, ["127.0.0.1:5353", "10.0.0.1:0", "[::1]:5354", "[::1]"], ["8080:80", "5353:53/udp"], new FileInfo("cap.pcap"));
        Assert.Equal(9000, s.Mtu);
        Assert.Equal([IPEndPoint.Parse("127.0.0.1:5353"), IPEndPoint.Parse("10.0.0.1:53"), IPEndPoint.Parse("[::1]:5354"), IPEndPoint.Parse("[::1]:53")], s.DnsUpstreams);
        Assert.Equal([new PortPublish(8080, 80, false), new PortPublish(5353, 53, true)], s.Publishes);
        Assert.Equal(Path.GetFullPath("cap.pcap"), s.PcapPath);
    }

    [Fact]
    public void Publish_takes_a_loopback_host_address_of_either_family()
    {
        GatewaySettings s = GatewaySettings.Parse(1500, null, ["[::1]:8080:80", "127.0.0.2:5353:53/udp", "8081:81"], null);
        Assert.Equal(
            [
                new PortPublish(8080, 80, false) { Host = IPAddress.IPv6Loopback },
                new PortPublish(5353, 53, true) { Host = IPAddress.Parse("127.0.0.2") },
                new PortPublish(8081, 81, false),
            ],
            s.Publishes);
        Assert.Equal(["[::1]:8080", "127.0.0.2:5353", "127.0.0.1:8081"], s.Publishes.Select(p => p.HostEndPoint));
    }

    [Fact]
    public void The_defaults_are_the_parsed_empty_command_line()
    {
        GatewaySettings s = GatewaySettings.Parse(1500, null, null, null);
        Assert.Equal((GatewaySettings.Default.Mtu, GatewaySettings.Default.PcapPath), (s.Mtu, s.PcapPath));
        Assert.Empty(s.DnsUpstreams);
        Assert.Empty(s.Publishes);
    }

    [Theory]
    [InlineData(575, null, null, "--mtu")]
    [InlineData(65521, null, null, "--mtu")]
    [InlineData(1500, "::1", null, "--dns-upstream")]
    [InlineData(1500, "[::1", null, "--dns-upstream")]
    [InlineData(1500, "dns.example:53", null, "--dns-upstream")]
    [InlineData(1500, null, "80", "")]
    [InlineData(1500, null, "[::1:8080:80", "[HOST]")]
    [InlineData(1500, null, "0.0.0.0:8080:80", "loopback only")]
    [InlineData(1500, null, "[::]:8080:80", "loopback only")]
    [InlineData(1500, null, "[2001:db8::1]:8080:80", "loopback only")]
    [InlineData(1500, null, "[::1]:8080", "HOSTPORT:GUESTPORT")]
    public void Bad_options_are_one_line_errors(int mtu, string? dns, string? publish, string mentions)
    {
        CliException e = Assert.Throws<CliException>(() =>
            GatewaySettings.Parse(mtu, dns is null ? null : [dns], publish is null ? null : [publish], null));
        Assert.Contains(mentions, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Theory]
    [InlineData(TcpOffload.None)]
    [InlineData(TcpOffload.Ipv4)]
    [InlineData(TcpOffload.Ipv4 | TcpOffload.Ipv6)]
    public void Server_options_carry_every_setting_and_the_links_offload(TcpOffload offload)
    {
        GatewaySettings s = GatewaySettings.Parse(9000, ["127.0.0.1:5353"], ["8080:80"], new FileInfo("cap.pcap"));
        VpnKitServerOptions o = s.ServerOptions(offload);
        Assert.Equal(9000, o.Mtu);
        Assert.Same(s.DnsUpstreams, o.DnsUpstreams);
        Assert.Same(s.Publishes, o.Publishes);
        Assert.Equal(s.PcapPath, o.PcapPath);
        Assert.Equal(offload, o.SegmentationOffload);
    }

    /// <summary>
    /// A gateway option added to VPNKit fails this test until <see cref="GatewaySettings.ServerOptions"/> sets it (or it
    /// is listed in <see cref="NotFromTheCommandLine"/>): with every setting away from its default, no server option may
    /// be left at its default.
    /// </summary>
    [Fact]
    public void No_server_option_is_forgotten()
    {
        VpnKitServerOptions mapped = (GatewaySettings.Parse(9000, ["127.0.0.1:5353"], ["8080:80"], new FileInfo("cap.pcap"))
            with
            {
                BlockMetadata = true,
                HostLoopback = false,
                DnsRecords = [Kit.VpnKit.Services.DnsRecord.Parse("a.test=10.0.0.1")],
                DnsSearch = ["corp.test"],
                ResolvConfPath = "/run/other/resolv.conf",
                HostsPath = null,
                Ui = IPEndPoint.Parse("127.0.0.1:9"),
                Ipv6 = false,
                Ipv6Prefix = IPAddress.Parse("fd12::"),
                Proxy = new Kit.VpnKit.Nat.UpstreamProxyOptions(),
                PolicyRules = Kit.VpnKit.Policy.PolicyJson.ParseRules("""{"rules":[{"name":"r","match":{"port":80},"action":"deny"}]}"""u8),
            }).ServerOptions(TcpOffload.Ipv4 | TcpOffload.Ipv6);
        var defaults = new VpnKitServerOptions();
        foreach (PropertyInfo p in typeof(VpnKitServerOptions).GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (NotFromTheCommandLine.Contains(p.Name))
            {
                continue;
            }
            object? before = p.GetValue(defaults), after = p.GetValue(mapped);
            bool same = before is System.Collections.IEnumerable a && after is System.Collections.IEnumerable b && before is not string
                ? a.Cast<object>().SequenceEqual(b.Cast<object>())
                : Equals(before, after);
            Assert.False(same, $"VpnKitServerOptions.{p.Name} is not set from the command line: map it in GatewaySettings.ServerOptions or list it in NotFromTheCommandLine");
        }
    }

    /// <summary>The reachability switches as each spelling sets them (docs/security.md, "What the guest can reach").</summary>
    [Theory]
    [InlineData(new string[0], false, true)]
    [InlineData(new[] { "--block-metadata" }, true, true)]
    [InlineData(new[] { "--no-host-loopback" }, false, false)]
    [InlineData(new[] { "--host-loopback=false" }, false, false)]
    [InlineData(new[] { "--host-loopback", "false" }, false, false)]
    [InlineData(new[] { "--host-loopback" }, false, true)]
    public void ReachabilitySwitchesParse(string[] args, bool blockMetadata, bool hostLoopback)
    {
        var policy = new GatewayPolicyOptions();
        var command = new System.CommandLine.RootCommand();
        foreach (System.CommandLine.Option o in policy.All)
        {
            command.Options.Add(o);
        }
        System.CommandLine.ParseResult parse = command.Parse(args);
        Assert.Empty(parse.Errors);
        GatewaySettings s = policy.Apply(GatewaySettings.Default, parse);
        Assert.Equal(blockMetadata, s.BlockMetadata);
        Assert.Equal(hostLoopback, s.HostLoopback);
        Assert.Equal(blockMetadata, s.ServerOptions(TcpOffload.None).BlockMetadata);
        Assert.Equal(hostLoopback, s.ServerOptions(TcpOffload.None).HostLoopback);
    }

    [Theory]
    [InlineData(new string[0], null, true)]
    [InlineData(new[] { "--ui", "tcp://127.0.0.1:8080" }, "127.0.0.1:8080", true)]
    [InlineData(new[] { "--ui", "tcp://localhost:8080", "--ui-http=false" }, "127.0.0.1:8080", false)]
    [InlineData(new[] { "--ui", "tcp://127.0.0.2:81" }, "127.0.0.2:81", true)]
    [InlineData(new[] { "--ui", "tcp://0.0.0.0:8080", "--ui-any-address" }, "0.0.0.0:8080", true)]
    public void UiSwitchesParse(string[] args, string? endPoint, bool http)
    {
        GatewaySettings s = Apply(args);
        Assert.Equal(endPoint, s.Ui?.ToString());
        Assert.Equal(endPoint is not null, s.ServerOptions(TcpOffload.None).Inspect is not null);
        Assert.Equal(http, s.ServerOptions(TcpOffload.None).Inspect?.Http ?? true);
    }

    [Theory]
    [InlineData("tcp://0.0.0.0:8080", "not a loopback address")]
    [InlineData("tcp://192.168.1.5:8080", "not a loopback address")]
    [InlineData("http://127.0.0.1:8080", "--ui wants tcp://127.0.0.1:PORT")]
    [InlineData("tcp://127.0.0.1", "--ui wants tcp://127.0.0.1:PORT")]
    [InlineData("tcp://127.0.0.1:0", "--ui wants tcp://127.0.0.1:PORT")]
    [InlineData("tcp://nowhere:80", "--ui wants tcp://127.0.0.1:PORT")]
    public void UiOffLoopbackOrMalformedIsRefused(string spec, string mentions)
    {
        CliException e = Assert.Throws<CliException>(() => Apply(["--ui", spec]));
        Assert.Contains(mentions, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }

    [Fact]
    public void ProxySwitchesParse()
    {
        Assert.Null(Apply([]).Proxy);
        GatewaySettings s = Apply(["--http-proxy", "http://u:p@127.0.0.1:3128", "--https-proxy", "proxy.test:8080", "--no-proxy", ".corp.test,10.0.0.0/8"]);
        Kit.VpnKit.Nat.UpstreamProxyOptions o = s.ServerOptions(TcpOffload.None).Proxy!;
        Assert.Equal(("http://127.0.0.1:3128", "http://proxy.test:8080"), (o.Http!.ToString(), o.Https!.ToString()));
        Assert.True(o.NoProxy.Matches("a.corp.test") && o.NoProxy.Matches("10.1.1.1") && !o.NoProxy.Matches("example.test"));
    }

    [Theory]
    [InlineData("--http-proxy", "https://u:secret@proxy.test", "only http:// proxies")]
    [InlineData("--https-proxy", "socks5://proxy.test:1080", "only http:// proxies")]
    [InlineData("--http-proxy", "http://proxy.test:http", "is not a port")]
    [InlineData("--no-proxy", "10.0.0.0/99", "not an IPv4 CIDR")]
    public void BadProxySwitchesAreOneLineErrors(string flag, string value, string mentions)
    {
        CliException e = Assert.Throws<CliException>(() => Apply([flag, value]));
        Assert.Contains(mentions, e.Message, StringComparison.Ordinal);
        Assert.StartsWith(flag, e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("secret", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', e.Message);
    }

    private static GatewaySettings Apply(string[] args)
    {
        var policy = new GatewayPolicyOptions();
        var command = new System.CommandLine.RootCommand();
        foreach (System.CommandLine.Option o in policy.All)
        {
            command.Options.Add(o);
        }
        System.CommandLine.ParseResult parse = command.Parse(args);
        Assert.Empty(parse.Errors);
        return policy.Apply(GatewaySettings.Default, parse);
    }

    [Fact]
    public void DnsSwitchesParse()
    {
        var policy = new GatewayPolicyOptions();
        var command = new System.CommandLine.RootCommand();
        foreach (System.CommandLine.Option o in policy.All)
        {
            command.Options.Add(o);
        }
        GatewaySettings s = policy.Apply(GatewaySettings.Default, command.Parse(
            ["--dns-record", "*.Zone.Test=10.0.0.1", "--dns-search", "a.test,B.test.", "--dns-search", "c.test", "--resolv-conf", "/x/resolv.conf", "--no-hosts-file"]));
        Assert.Equal("*.zone.test", s.DnsRecords.Single().Name);
        Assert.Equal(["a.test", "b.test", "c.test"], s.DnsSearch);
        Assert.Equal("/x/resolv.conf", s.ResolvConfPath);
        Assert.Null(s.HostsPath);
        GatewaySettings d = policy.Apply(GatewaySettings.Default, command.Parse([]));
        Assert.Equal("/etc/resolv.conf", d.ResolvConfPath);
        Assert.Equal("/etc/hosts", d.HostsPath);
        Assert.Throws<CliException>(() => policy.Apply(GatewaySettings.Default, command.Parse(["--dns-search", "a,b,c,d,e,f,g"])));
    }

    [Fact]
    public void Ipv6SwitchesParse()
    {
        GatewaySettings d = Apply([]);
        Assert.True(d.ServerOptions(TcpOffload.None).Ipv6);
        Assert.Null(d.ServerOptions(TcpOffload.None).Ipv6Prefix);
        Assert.False(Apply(["--no-ipv6"]).ServerOptions(TcpOffload.None).Ipv6);
        Assert.Equal(IPAddress.Parse("fd12:3456:789a:1::"), Apply(["--ipv6-prefix", "fd12:3456:789a:1::/64"]).ServerOptions(TcpOffload.None).Ipv6Prefix);
        Assert.Equal(IPAddress.Parse("2001:db8:1:2::"), Apply(["--ipv6-prefix", "2001:db8:1:2::/64"]).Ipv6Prefix);
    }

    [Theory]
    [InlineData("fd00::/48", "PREFIX/64")]
    [InlineData("fd00::", "PREFIX/64")]
    [InlineData("10.0.0.0/64", "PREFIX/64")]
    [InlineData("::ffff:10.0.0.0/64", "PREFIX/64")]
    [InlineData("fe80::/64", "not a unicast prefix")]
    [InlineData("ff02::/64", "not a unicast prefix")]
    [InlineData("::/64", "not a unicast prefix")]
    [InlineData("fd00::1/64", "bits set past the /64")]
    public void BadIpv6PrefixesAreOneLineErrors(string spec, string mentions)
    {
        CliException e = Assert.Throws<CliException>(() => Apply(["--ipv6-prefix", spec]));
        Assert.Contains(mentions, e.Message);
        Assert.DoesNotContain('\n', e.Message);
    }
}
