using System.CommandLine;
using System.Net;
using Kit.VpnKit;
using Kit.VpnKit.Nat;

namespace Kit.Cli.Commands;

/// <summary>
/// What the command line says about a VPNKit gateway (<c>--mtu</c>, <c>--dns-upstream</c>, <c>--publish</c>,
/// <c>--pcap</c>), read once by <see cref="Parse"/> for <c>kit net run</c>, <c>kit net serve</c>, <c>kit vm run --net
/// vpnkit</c> and <c>kit up</c>. <see cref="ServerOptions"/> is the only place that turns it into
/// <see cref="VpnKitServerOptions"/>, so a new gateway option is wired for every command or for none.
/// </summary>
internal sealed record GatewaySettings(int Mtu, IReadOnlyList<IPEndPoint> DnsUpstreams, IReadOnlyList<PortPublish> Publishes, string? PcapPath)
{
    /// <summary><c>--block-metadata</c>: refuse guest traffic to 169.254.169.254 (on by default in <c>kit up</c>).</summary>
    public bool BlockMetadata { get; init; }

    /// <summary><c>--host-loopback</c> (default) / <c>--no-host-loopback</c>: 192.168.65.2 reaches the host's 127.0.0.1.</summary>
    public bool HostLoopback { get; init; } = true;

    /// <summary><c>--dns-record NAME=IP</c>: names the forwarder answers itself.</summary>
    public IReadOnlyList<Kit.VpnKit.Services.DnsRecord> DnsRecords { get; init; } = [];

    /// <summary><c>--dns-search DOMAIN</c>: DHCP's domain search list, and the namespace's resolv.conf search line.</summary>
    public IReadOnlyList<string> DnsSearch { get; init; } = [];

    /// <summary><c>--resolv-conf FILE</c>: the upstreams when none are given, followed as the file changes.</summary>
    public string ResolvConfPath { get; init; } = "/etc/resolv.conf";

    /// <summary><c>--hosts-file FILE</c> / <c>--no-hosts-file</c>: the hosts file the forwarder answers from.</summary>
    public string? HostsPath { get; init; } = "/etc/hosts";

    /// <summary><c>--ui tcp://HOST:PORT</c>: where the inspector's page and API are served; null: the inspector is off.</summary>
    public IPEndPoint? Ui { get; init; }

    /// <summary><c>--ui-http</c> (default true): the inspector also frames HTTP/1.x and reads TLS ClientHellos.</summary>
    public bool UiHttp { get; init; } = true;

    /// <summary><c>--policy FILE</c>: the rules new flows are checked against (docs/vpnkit.md, "Policy").</summary>
    public IReadOnlyList<Kit.VpnKit.Policy.PolicyRule> PolicyRules { get; init; } = [];
    /// <summary><c>--http-proxy</c>, <c>--https-proxy</c>, <c>--no-proxy</c>, <c>--proxy-from-env</c>: upstream proxies; null: none.</summary>
    public UpstreamProxyOptions? Proxy { get; init; }

    /// <summary><c>--no-ipv6</c>: no IPv6 on the guest link (no RA; IPv6 frames dropped).</summary>
    public bool Ipv6 { get; init; } = true;

    /// <summary><c>--ipv6-prefix PREFIX/64</c>: the guest prefix; null: the default fd00:6b69:7400::/64.</summary>
    public IPAddress? Ipv6Prefix { get; init; }

    /// <summary>The defaults: MTU 1500, the host's resolvers, nothing published, no capture.</summary>
    public static GatewaySettings Default { get; } = new(1500, [], [], null);

    /// <summary>Checks and reads the options (CliException with a one-line message on a bad one).</summary>
    public static GatewaySettings Parse(int mtu, string[]? dns, string[]? publish, FileInfo? pcap)
    {
        if (mtu is < 576 or > 65520)
        {
            throw new CliException($"--mtu must be between 576 and 65520, got {mtu}");
        }
        var upstreams = new List<IPEndPoint>();
        foreach (string d in dns ?? [])
        {
            // IPv4:PORT or [IPv6]:PORT (the brackets keep the port apart from the address, RFC 3986 §3.2.2).
            if (!IPEndPoint.TryParse(d, out IPEndPoint? ep) || (ep.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 && !d.StartsWith('[')))
            {
                throw new CliException($"--dns-upstream wants IPv4:PORT or [IPv6]:PORT, got '{d}'");
            }
            if (ep.Port == 0)
            {
                ep.Port = 53;
            }
            upstreams.Add(ep);
        }
        var publishes = new List<PortPublish>();
        foreach (string p in publish ?? [])
        {
            try
            {
                publishes.Add(PortPublish.Parse(p));
            }
            catch (FormatException e)
            {
                throw new CliException(e.Message);
            }
        }
        return new GatewaySettings(mtu, upstreams, publishes, pcap?.FullName);
    }

    /// <summary>
    /// The server's options. <paramref name="segmentationOffload"/> is the link's, not the user's: the families whose
    /// TSO frames and partial checksums the one guest link takes (an offloading TAP both, virtio-net with its offloads
    /// IPv4), none with several links.
    /// <see cref="VpnKitServerOptions.HostNames"/> keeps its default: no command sets it.
    /// </summary>
    public VpnKitServerOptions ServerOptions(TcpOffload segmentationOffload) => new()
    {
        Mtu = Mtu,
        DnsUpstreams = DnsUpstreams,
        Publishes = Publishes,
        PcapPath = PcapPath,
        SegmentationOffload = segmentationOffload,
        BlockMetadata = BlockMetadata,
        HostLoopback = HostLoopback,
        DnsRecords = DnsRecords,
        DnsSearch = DnsSearch,
        ResolvConfPath = ResolvConfPath,
        HostsPath = HostsPath,
        Ipv6 = Ipv6,
        Ipv6Prefix = Ipv6Prefix,
        Inspect = Ui is null ? null : new Kit.VpnKit.Inspect.InspectorOptions { Http = UiHttp },
        PolicyRules = PolicyRules,
        Proxy = Proxy,
    };

    /// <summary>Reads <c>--policy FILE</c> (CliException naming the file, and the line or field, on a bad one).</summary>
    public static IReadOnlyList<Kit.VpnKit.Policy.PolicyRule> ReadPolicy(FileInfo? file)
    {
        if (file is null)
        {
            return [];
        }
        try
        {
            if (file.Length > Kit.VpnKit.Policy.PolicyJson.MaxBytes)
            {
                throw new CliException($"--policy {file.FullName}: larger than {Kit.VpnKit.Policy.PolicyJson.MaxBytes} bytes");
            }
            return Kit.VpnKit.Policy.PolicyJson.ParseRules(File.ReadAllBytes(file.FullName));
        }
        catch (Kit.VpnKit.Policy.PolicyException e)
        {
            throw new CliException($"--policy {file.FullName}: {e.Message}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliException($"--policy {file.FullName}: {e.Message}");
        }
    }

    /// <summary>Serves the inspector of a started gateway when <c>--ui</c> asked for it (IOException when it cannot listen).</summary>
    public IDisposable? StartUi(VpnKitServer server)
    {
        if (Ui is null || server.Inspector is null)
        {
            return null;
        }
        var web = Kit.Cli.Net.InspectorWeb.Start(server.Inspector, server.Captures, Ui);
        Console.Error.WriteLine($"kit: inspector on http://{Ui}/");
        return web;
    }

    /// <summary>
    /// Reads <c>--ui tcp://HOST:PORT</c>. The inspector shows every flow, name and URL of the guest and has no
    /// authentication, so only a loopback address is taken unless <paramref name="anyAddress"/> (docs/security.md).
    /// </summary>
    public static IPEndPoint ParseUi(string spec, bool anyAddress)
    {
        const string Scheme = "tcp://";
        string rest = spec.StartsWith(Scheme, StringComparison.Ordinal) ? spec[Scheme.Length..] : "";
        if (rest.StartsWith("localhost:", StringComparison.OrdinalIgnoreCase))
        {
            rest = "127.0.0.1" + rest[9..];
        }
        if (!IPEndPoint.TryParse(rest, out IPEndPoint? ep) || !rest.Contains(':', StringComparison.Ordinal) || ep.Port == 0)
        {
            throw new CliException($"--ui wants tcp://127.0.0.1:PORT, got '{spec}'");
        }
        if (!IPAddress.IsLoopback(ep.Address) && !anyAddress)
        {
            throw new CliException($"--ui: {ep} is not a loopback address; the inspector shows all of the guest's traffic to whoever connects and has no authentication (add --ui-any-address to serve it there anyway)");
        }
        return ep;
    }
}

/// <summary>
/// The gateway's switches beyond <see cref="GatewaySettings.Parse"/>'s: what the guest can reach (docs/security.md,
/// "What the guest can reach") and how its DNS follows the host (docs/networking.md, "DNS"). One set of options shared
/// by <c>kit net run</c>, <c>kit net serve</c> and <c>kit vm run</c>.
/// </summary>
internal sealed class GatewayPolicyOptions
{
    public Option<bool> BlockMetadata { get; } = new("--block-metadata")
    {
        Description = "Refuse guest traffic to the cloud metadata address 169.254.169.254 (TCP reset, UDP and ICMP dropped).",
    };

    public Option<bool> HostLoopback { get; } = new("--host-loopback")
    {
        Description = "Whether 192.168.65.2 reaches the host's 127.0.0.1 (default true; --host-loopback=false or --no-host-loopback turns it off).",
        DefaultValueFactory = _ => true,
    };

    public Option<bool> NoHostLoopback { get; } = new("--no-host-loopback")
    {
        Description = "Same as --host-loopback=false: 192.168.65.2 reaches nothing on the host.",
    };

    public Option<string[]> DnsRecord { get; } = new("--dns-record")
    {
        HelpName = "NAME=IP",
        Description = "Answer NAME (or every name under ZONE, with *.ZONE) with IP in the gateway's DNS (repeatable; before the hosts file and the upstreams).",
    };

    public Option<string[]> DnsSearch { get; } = new("--dns-search")
    {
        HelpName = "DOMAIN",
        Description = "Domain search list the guest gets by DHCP (option 119; the first is the domain name, option 15). Repeatable or comma-separated.",
    };

    public Option<FileInfo> ResolvConf { get; } = new("--resolv-conf")
    {
        HelpName = "FILE",
        Description = "Where the upstreams come from without --dns-upstream; re-read when it changes (a VPN connecting). Default: /etc/resolv.conf.",
        DefaultValueFactory = _ => new FileInfo("/etc/resolv.conf"),
    };

    public Option<FileInfo> HostsFile { get; } = new("--hosts-file")
    {
        HelpName = "FILE",
        Description = "Answer the names of this hosts file (re-read when it changes; names on the host's loopback answer with the host alias). Default: /etc/hosts.",
        DefaultValueFactory = _ => new FileInfo("/etc/hosts"),
    };

    public Option<bool> NoHostsFile { get; } = new("--no-hosts-file")
    {
        Description = "Answer no names from a hosts file.",
    };

    public Option<string?> Ui { get; } = new("--ui")
    {
        HelpName = "tcp://127.0.0.1:PORT",
        Description = "Record flows, DNS and HTTP, and serve the inspector's web page and JSON API (/api/flows, /api/dns, /api/http, /api/http.har, /api/events, /api/rules) there. Loopback only unless --ui-any-address.",
    };

    public Option<bool> UiAnyAddress { get; } = new("--ui-any-address")
    {
        Description = "Let --ui listen on an address other than loopback (anyone who reaches it sees the guest's traffic).",
    };

    public Option<bool> UiHttp { get; } = new("--ui-http")
    {
        Description = "Frame HTTP/1.x and read TLS ClientHellos for the inspector (default true; --ui-http=false records flows and DNS only).",
        DefaultValueFactory = _ => true,
    };

    public Option<FileInfo?> Policy { get; } = new("--policy")
    {
        HelpName = "FILE",
        Description = "Policy rules (JSON: allow, deny, reject, impairment) checked in order for every new flow; changed at run time through --ui's /api/rules (docs/vpnkit.md, \"Policy\").",
    };

    public Option<string?> HttpProxy { get; } = new("--http-proxy")
    {
        HelpName = "http://[USER:PASSWORD@]HOST:PORT",
        Description = "Send the guest's HTTP (TCP port 80, and plain requests to the gateway's proxy 192.168.65.1:3128) through this proxy; USER:PASSWORD becomes Basic Proxy-Authorization.",
    };

    public Option<string?> HttpsProxy { get; } = new("--https-proxy")
    {
        HelpName = "http://[USER:PASSWORD@]HOST:PORT",
        Description = "Tunnel the guest's TCP port 443 (and CONNECT to 192.168.65.1:3128) through this proxy with CONNECT to the TLS server name or the address.",
    };

    public Option<string?> NoProxy { get; } = new("--no-proxy")
    {
        HelpName = "LIST",
        Description = "Destinations that go direct, as curl's NO_PROXY: names (matching their subdomains too), .suffix or *.suffix, IPv4 addresses, CIDR blocks, or *. The host alias and loopback always go direct.",
    };

    public Option<bool> ProxyFromEnv { get; } = new("--proxy-from-env")
    {
        Description = "Take the upstream proxies from http_proxy, https_proxy and no_proxy (or their upper-case names); the flags above win.",
    };


    /// <summary>The upstream proxies the command line (and with --proxy-from-env the environment) names; null: none.</summary>
    private UpstreamProxyOptions? Proxies(ParseResult parse) =>
        ProxiesFrom(parse.GetValue(HttpProxy), parse.GetValue(HttpsProxy), parse.GetValue(NoProxy), parse.GetValue(ProxyFromEnv), Environment.GetEnvironmentVariable);

    /// <summary>
    /// The upstream proxies from the flags' values and, with <paramref name="fromEnv"/>, <paramref name="environment"/>'s
    /// http_proxy, https_proxy and no_proxy; a flag wins over its variable. Null: none. CliException on a bad value.
    /// </summary>
    public static UpstreamProxyOptions? ProxiesFrom(string? http, string? https, string? noProxy, bool fromEnv, Func<string, string?> environment)
    {
        if (!fromEnv && http is null && https is null && noProxy is null)
        {
            return null;
        }
        try
        {
            UpstreamProxyOptions env = fromEnv ? UpstreamProxyOptions.FromEnvironment(environment) : new();
            return new UpstreamProxyOptions
            {
                Http = http is null ? env.Http : ProxyServer.Parse(http, "--http-proxy"),
                Https = https is null ? env.Https : ProxyServer.Parse(https, "--https-proxy"),
                NoProxy = noProxy is null ? env.NoProxy : NoProxyList.Parse(noProxy, "--no-proxy"),
            };
        }
        catch (FormatException e)
        {
            throw new CliException(e.Message);
        }
    }

    public Option<string?> Ipv6Prefix { get; } = new("--ipv6-prefix")
    {
        HelpName = "PREFIX/64",
        Description = "The guests' IPv6 prefix (SLAAC); the gateway is ::1 in it, the host alias ::2. Default: fd00:6b69:7400::/64.",
    };

    public Option<bool> NoIpv6 { get; } = new("--no-ipv6")
    {
        Description = "No IPv6 on the guest link: no router advertisements, IPv6 frames dropped.",
    };

    public IEnumerable<Option> All => [BlockMetadata, HostLoopback, NoHostLoopback, DnsRecord, DnsSearch, ResolvConf, HostsFile, NoHostsFile, Ui, UiAnyAddress, UiHttp, Policy, HttpProxy, HttpsProxy, NoProxy, ProxyFromEnv, Ipv6Prefix, NoIpv6];

    /// <summary>
    /// Reads <c>--ipv6-prefix</c>: a /64 (SLAAC needs 64-bit interface identifiers, RFC 4862 §5.5.3) of unicast space
    /// other than link-local, loopback and the unspecified address, with no bits set past the 64th.
    /// </summary>
    public static IPAddress ParseIpv6Prefix(string spec)
    {
        int slash = spec.IndexOf('/', StringComparison.Ordinal);
        if (slash < 0 || spec[(slash + 1)..] != "64" || !IPAddress.TryParse(spec.AsSpan(0, slash), out IPAddress? a)
            || a.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6 || a.IsIPv4MappedToIPv6)
        {
            throw new CliException($"--ipv6-prefix wants an IPv6 PREFIX/64 (e.g. fd00:6b69:7400::/64), got '{spec}'");
        }
        byte[] b = a.GetAddressBytes();
        if (b[0] == 0xFF || (b[0] == 0xFE && (b[1] & 0xC0) == 0x80) || b.AsSpan(0, 8).IndexOfAnyExcept((byte)0) < 0)
        {
            throw new CliException($"--ipv6-prefix: {spec} is not a unicast prefix guests can use (multicast, link-local or ::/64)");
        }
        if (b.AsSpan(8).IndexOfAnyExcept((byte)0) >= 0)
        {
            throw new CliException($"--ipv6-prefix: {spec} has bits set past the /64");
        }
        return a;
    }

    /// <summary><paramref name="settings"/> with the switches as the command line set them.</summary>
    public GatewaySettings Apply(GatewaySettings settings, ParseResult parse)
    {
        var records = new List<Kit.VpnKit.Services.DnsRecord>();
        foreach (string r in parse.GetValue(DnsRecord) ?? [])
        {
            try
            {
                records.Add(Kit.VpnKit.Services.DnsRecord.Parse(r));
            }
            catch (FormatException e)
            {
                throw new CliException($"--dns-record: {e.Message}");
            }
        }
        var search = new List<string>();
        foreach (string d in (parse.GetValue(DnsSearch) ?? []).SelectMany(d => d.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)))
        {
            // RFC 3397's list and resolv.conf's search line both hold host names only.
            string name = d.TrimEnd('.').ToLowerInvariant();
            if (!Kit.VpnKit.Services.DnsRecord.IsDomainName(name))
            {
                throw new CliException($"--dns-search: '{d}' is not a domain name");
            }
            search.Add(name);
        }
        if (search.Count > 6)
        {
            throw new CliException("--dns-search: at most 6 domains (resolv.conf(5))");
        }
        return settings with
        {
            BlockMetadata = parse.GetValue(BlockMetadata),
            HostLoopback = parse.GetValue(HostLoopback) && !parse.GetValue(NoHostLoopback),
            DnsRecords = records,
            DnsSearch = search,
            ResolvConfPath = parse.GetValue(ResolvConf)!.FullName,
            HostsPath = parse.GetValue(NoHostsFile) ? null : parse.GetValue(HostsFile)!.FullName,
            Ui = parse.GetValue(Ui) is string ui ? GatewaySettings.ParseUi(ui, parse.GetValue(UiAnyAddress)) : null,
            UiHttp = parse.GetValue(UiHttp),
            PolicyRules = GatewaySettings.ReadPolicy(parse.GetValue(Policy)),
            Proxy = Proxies(parse),
            Ipv6 = !parse.GetValue(NoIpv6),
            Ipv6Prefix = parse.GetValue(Ipv6Prefix) is string prefix ? ParseIpv6Prefix(prefix) : null,
        };
    }
}
