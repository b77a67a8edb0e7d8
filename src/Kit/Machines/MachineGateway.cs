using System.Text;
using Kit.Cli.Commands;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Policy;

namespace Kit.Cli.Machines;

/// <summary>
/// A machine's network rules that its guest must neither read nor change: the policy (<c>kit up --policy FILE</c>) and
/// the upstream proxies (<c>--http-proxy</c>, <c>--https-proxy</c>, <c>--no-proxy</c>, <c>--proxy-from-env</c>).
/// They live in the machine's 0700 data directory as <c>policy.json</c> and <c>proxy</c> (0600), not on its DataKit
/// branch beside <c>config/ports</c>: the guest mounts that branch read-write, and a guest that could edit its own policy
/// would lift it. Proxy credentials are never kept at all: a URL with <c>user:password@</c> is refused, and
/// <c>--proxy-from-env</c> reads them from the environment of the <c>kit up</c> that starts the machine.
/// </summary>
internal sealed record MachineGateway
{
    /// <summary>The policy file's bytes as given (checked when kept and again at every start); null: no rules.</summary>
    public string? PolicyJson { get; init; }

    public string? HttpProxy { get; init; }

    public string? HttpsProxy { get; init; }

    public string? NoProxy { get; init; }

    public bool ProxyFromEnv { get; init; }

    private static string PolicyPath(MachinePaths paths) => Path.Combine(paths.Data, "policy.json");

    private static string ProxyPath(MachinePaths paths) => Path.Combine(paths.Data, "proxy");

    public static MachineGateway Read(MachinePaths paths)
    {
        var g = new MachineGateway { PolicyJson = File.Exists(PolicyPath(paths)) ? File.ReadAllText(PolicyPath(paths)) : null };
        if (!File.Exists(ProxyPath(paths)))
        {
            return g;
        }
        foreach (string line in File.ReadAllLines(ProxyPath(paths)))
        {
            int space = line.IndexOf(' ', StringComparison.Ordinal);
            (string key, string value) = space < 0 ? (line, "") : (line[..space], line[(space + 1)..]);
            g = key switch
            {
                "http" => g with { HttpProxy = value },
                "https" => g with { HttpsProxy = value },
                "no-proxy" => g with { NoProxy = value },
                "from-env" => g with { ProxyFromEnv = true },
                _ => g,
            };
        }
        return g;
    }

    /// <summary>Keeps the settings (0600 files written whole, then renamed over the old ones); an absent setting removes its line or file.</summary>
    public void Write(MachinePaths paths)
    {
        Replace(PolicyPath(paths), PolicyJson);
        var proxy = new StringBuilder();
        foreach ((string key, string? value) in (ReadOnlySpan<(string, string?)>)[("http", HttpProxy), ("https", HttpsProxy), ("no-proxy", NoProxy), ("from-env", ProxyFromEnv ? "" : null)])
        {
            if (value is not null)
            {
                proxy.Append(key).Append(value.Length > 0 ? " " + value : "").Append('\n');
            }
        }
        Replace(ProxyPath(paths), proxy.Length > 0 ? proxy.ToString() : null);
    }

    /// <summary>
    /// What the flags of <c>kit up</c> change: a FILE or <c>none</c> for the policy, a URL, LIST or <c>none</c> for the
    /// proxies. Everything is checked here, before anything is kept (CliException with one line).
    /// </summary>
    public MachineGateway With(FileInfo? policy, bool noPolicy, string? http, string? https, string? noProxy, bool? fromEnv)
    {
        MachineGateway g = this;
        if (noPolicy)
        {
            g = g with { PolicyJson = null };
        }
        else if (policy is not null)
        {
            _ = GatewaySettings.ReadPolicy(policy); // the checks and the message kit net run gives
            g = g with { PolicyJson = File.ReadAllText(policy.FullName) };
        }
        g = g with
        {
            HttpProxy = ProxyUrl(http, "--http-proxy", g.HttpProxy),
            HttpsProxy = ProxyUrl(https, "--https-proxy", g.HttpsProxy),
            NoProxy = noProxy is null ? g.NoProxy : noProxy == "none" ? null : noProxy,
            ProxyFromEnv = fromEnv ?? g.ProxyFromEnv,
        };
        _ = g.Proxies(_ => null);
        return g;
    }

    /// <summary>The gateway's settings with these rules (CliException naming the file when a kept one no longer parses).</summary>
    public GatewaySettings Apply(GatewaySettings gateway, Func<string, string?> environment)
    {
        IReadOnlyList<PolicyRule> rules = [];
        if (PolicyJson is not null)
        {
            try
            {
                rules = PolicyJson.Length > Kit.VpnKit.Policy.PolicyJson.MaxBytes
                    ? throw new PolicyException($"larger than {Kit.VpnKit.Policy.PolicyJson.MaxBytes} bytes")
                    : Kit.VpnKit.Policy.PolicyJson.ParseRules(Encoding.UTF8.GetBytes(PolicyJson));
            }
            catch (PolicyException e)
            {
                // Closed, not open: a machine whose deny rules no longer parse does not start without them.
                throw new CliException($"policy.json: {e.Message}");
            }
        }
        return gateway with { PolicyRules = rules, Proxy = Proxies(environment) };
    }

    /// <summary>The proxies; the flags win over the environment, as for kit net run.</summary>
    private UpstreamProxyOptions? Proxies(Func<string, string?> environment) =>
        GatewayPolicyOptions.ProxiesFrom(HttpProxy, HttpsProxy, NoProxy, ProxyFromEnv, environment);

    private static string? ProxyUrl(string? flag, string name, string? kept)
    {
        if (flag is null)
        {
            return kept;
        }
        if (flag == "none")
        {
            return null;
        }
        string authority = flag.Contains("://", StringComparison.Ordinal) ? flag[(flag.IndexOf("://", StringComparison.Ordinal) + 3)..] : flag;
        if (authority.Split('/')[0].Contains('@', StringComparison.Ordinal))
        {
            throw new CliException($"{name}: a machine keeps no proxy credentials (its settings outlive this command); "
                + "put the URL with user:password in http_proxy or https_proxy and use --proxy-from-env");
        }
        return flag;
    }

    private static void Replace(string path, string? text)
    {
        if (text is null)
        {
            File.Delete(path);
            return;
        }
        string temp = path + ".new";
        File.Delete(temp);
        using (var f = new FileStream(temp, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        }))
        {
            f.Write(Encoding.UTF8.GetBytes(text));
            f.Flush(flushToDisk: true);
        }
        File.Move(temp, path, overwrite: true);
    }
}
