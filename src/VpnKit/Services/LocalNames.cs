using System.Net;
using System.Net.Sockets;

namespace Kit.VpnKit.Services;

/// <summary>A name the gateway answers itself: an exact name, or every name under a zone when it starts with "*.".</summary>
public sealed record DnsRecord(string Name, IPAddress Address)
{
    /// <summary>Parses NAME=IP (NAME may be *.ZONE); FormatException with the reason otherwise.</summary>
    public static DnsRecord Parse(string text)
    {
        int eq = text.IndexOf('=', StringComparison.Ordinal);
        if (eq <= 0 || !IPAddress.TryParse(text.AsSpan(eq + 1), out IPAddress? address))
        {
            throw new FormatException($"a DNS record is NAME=IP (NAME may be *.ZONE), got '{text}'");
        }
        string name = LocalNames.Normalize(text[..eq]);
        string bare = name.StartsWith("*.", StringComparison.Ordinal) ? name[2..] : name;
        if (!LocalNames.IsHostName(bare))
        {
            throw new FormatException($"'{text[..eq]}' is not a DNS name (letters, digits, '-' and '.', labels of 1-63 characters)");
        }
        return new DnsRecord(name, address);
    }

    /// <summary>A host name as DNS carries it: letters, digits, '-', '_' and dots, labels of 1-63 characters.</summary>
    public static bool IsDomainName(string name) => LocalNames.IsHostName(name);
}

/// <summary>
/// The names the forwarder answers without asking upstream, in order of precedence: the built-in host names (the host
/// alias), the operator's records (<c>--dns-record</c>; exact names before zones, the longest zone first), then the
/// host's hosts file, followed as it changes (as glibc's resolver on the host would see it). In the hosts file, a
/// name the host maps to its own loopback is answered with the host alias, which reaches the host's loopback from
/// the guest; localhost names (RFC 6761 §6.3) are left to the guest's own resolver.
/// </summary>
internal sealed class LocalNames
{
    /// <summary>Names taken from one hosts file; the rest of a larger file is ignored.</summary>
    internal const int MaxHostsEntries = 100_000;

    private readonly Dictionary<string, IPAddress[]> _fixed = new(StringComparer.Ordinal);
    private readonly List<(string Suffix, IPAddress[] Addresses)> _zones = [];
    private readonly FollowedFile<Dictionary<string, IPAddress[]>>? _hosts;

    /// <param name="hostAlias6">The host alias's IPv6 address, which the host names answer for AAAA; null: IPv6 is off.</param>
    public LocalNames(IPAddress hostAlias, IEnumerable<string> hostNames, IEnumerable<DnsRecord> records, string? hostsPath, bool hostLoopback,
        IPAddress? hostAlias6 = null)
    {
        foreach (string h in hostNames)
        {
            _fixed[Normalize(h)] = hostAlias6 is null ? [hostAlias] : [hostAlias, hostAlias6];
        }
        foreach (IGrouping<string, DnsRecord> g in records.GroupBy(r => r.Name))
        {
            IPAddress[] addresses = [.. g.Select(r => r.Address).Distinct()];
            if (g.Key.StartsWith("*.", StringComparison.Ordinal))
            {
                _zones.Add((g.Key[1..], addresses));
            }
            else
            {
                _fixed.TryAdd(g.Key, addresses);
            }
        }
        _zones.Sort((a, b) => b.Suffix.Length.CompareTo(a.Suffix.Length));
        if (hostsPath is not null)
        {
            IPAddress? loopbackAs = hostLoopback ? hostAlias : null;
            _hosts = new(hostsPath, text => ParseHosts(text, loopbackAs), new(StringComparer.Ordinal));
        }
    }

    /// <summary>The addresses for <paramref name="name"/> (lower case, no trailing dot) if the gateway answers it.</summary>
    public bool TryFind(string name, out IPAddress[] addresses)
    {
        if (_fixed.TryGetValue(name, out addresses!))
        {
            return true;
        }
        foreach ((string suffix, IPAddress[] a) in _zones)
        {
            if (name.EndsWith(suffix, StringComparison.Ordinal) && name.Length > suffix.Length)
            {
                addresses = a;
                return true;
            }
        }
        return _hosts is not null && _hosts.Current.TryGetValue(name, out addresses!);
    }

    /// <summary>
    /// hosts(5): an address, then names, '#' starts a comment. Unparsable lines are skipped, as glibc skips them.
    /// </summary>
    internal static Dictionary<string, IPAddress[]> ParseHosts(string text, IPAddress? loopbackAs)
    {
        var names = new Dictionary<string, List<IPAddress>>(StringComparer.Ordinal);
        int entries = 0;
        foreach (string raw in text.Split('\n'))
        {
            string line = raw;
            int hash = line.IndexOf('#', StringComparison.Ordinal);
            if (hash >= 0)
            {
                line = line[..hash];
            }
            string[] fields = line.Split([' ', '\t', '\r'], StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 2 || !IPAddress.TryParse(fields[0], out IPAddress? address) || fields[0].Contains('%', StringComparison.Ordinal))
            {
                continue;
            }
            if (IPAddress.IsLoopback(address))
            {
                // The host's own loopback, seen from the guest: the host alias (IPv4 only, until the gateway has an
                // IPv6 alias), or nothing when the alias does not reach the host.
                if (loopbackAs is null || address.AddressFamily != AddressFamily.InterNetwork)
                {
                    continue;
                }
                address = loopbackAs;
            }
            for (int i = 1; i < fields.Length && entries < MaxHostsEntries; i++)
            {
                string name = Normalize(fields[i]);
                if (!IsHostName(name) || IsLocalhost(name))
                {
                    continue;
                }
                if (!names.TryGetValue(name, out List<IPAddress>? list))
                {
                    names[name] = list = [];
                }
                if (!list.Contains(address))
                {
                    list.Add(address);
                    entries++;
                }
            }
        }
        return names.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray(), StringComparer.Ordinal);
    }

    /// <summary>RFC 6761 §6.3: localhost and its subdomains are the asker's own loopback, never the host's.</summary>
    private static bool IsLocalhost(string name) =>
        name is "localhost" or "localhost.localdomain" or "ip6-localhost" or "ip6-loopback" || name.EndsWith(".localhost", StringComparison.Ordinal);

    internal static string Normalize(string name) => name.Trim().TrimEnd('.').ToLowerInvariant();

    /// <summary>RFC 1123 §2.1 host names (underscores allowed: hosts files and service records use them), at most 253 characters.</summary>
    internal static bool IsHostName(string name)
    {
        if (name.Length is 0 or > 253)
        {
            return false;
        }
        foreach (string label in name.Split('.'))
        {
            if (label.Length is 0 or > 63 || label[0] == '-' || label[^1] == '-')
            {
                return false;
            }
            foreach (char c in label)
            {
                if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_'))
                {
                    return false;
                }
            }
        }
        return true;
    }
}
