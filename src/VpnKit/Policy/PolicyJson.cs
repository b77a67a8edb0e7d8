using System.Globalization;
using System.Net;
using System.Text.Json;

namespace Kit.VpnKit.Policy;

/// <summary>
/// The policy format (docs/vpnkit.md, "Policy"), both ways: <c>{"rules":[{"name":"ads","match":{"dns":"*.blocked.test"},
/// "action":"reject"}]}</c>. Read with <see cref="JsonDocument"/> (no reflection: NativeAOT-safe) under tight bounds:
/// depth, size, rule count, number ranges, and every field checked, unknown ones refused (a misspelt condition must
/// not silently match everything). Every error names the line (syntax) or the field (meaning) and the reason.
/// </summary>
public static class PolicyJson
{
    /// <summary>A policy file or request body larger than this is refused before it is parsed.</summary>
    public const int MaxBytes = 1 << 20;

    // rules[] > rule{} > match{}: 4 levels is all the format has; a deeper document is hostile or wrong.
    private static readonly JsonDocumentOptions s_options = new() { MaxDepth = 5, AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Skip };

    /// <summary>A whole policy: <c>{"rules":[...]}</c>.</summary>
    public static List<PolicyRule> ParseRules(ReadOnlySpan<byte> utf8)
    {
        using JsonDocument doc = Open(utf8);
        return ReadRules(doc.RootElement);
    }

    /// <summary>A POST body: a whole policy (<c>{"rules":[...]}</c>, <paramref name="whole"/> set) or one rule.</summary>
    public static List<PolicyRule> ParseBody(ReadOnlySpan<byte> utf8, out bool whole)
    {
        using JsonDocument doc = Open(utf8);
        JsonElement root = doc.RootElement;
        whole = root.ValueKind == JsonValueKind.Object && root.TryGetProperty("rules", out _);
        return whole ? ReadRules(root) : [ReadRule(root, "rule")];
    }

    private static JsonDocument Open(ReadOnlySpan<byte> utf8)
    {
        if (utf8.Length > MaxBytes)
        {
            throw new PolicyException($"policy is {utf8.Length} bytes; at most {MaxBytes}");
        }
        try
        {
            return JsonDocument.Parse(utf8.ToArray(), s_options);
        }
        catch (JsonException e)
        {
            // JsonException's positions are 0-based.
            string where = e.LineNumber is long line ? $"line {line + 1}, column {(e.BytePositionInLine ?? 0) + 1}: " : "";
            throw new PolicyException($"{where}not valid JSON ({FirstSentence(e.Message)})");
        }
    }

    private static string FirstSentence(string message)
    {
        int dot = message.IndexOf(". ", StringComparison.Ordinal);
        return dot > 0 ? message[..dot] : message.TrimEnd('.');
    }

    private static List<PolicyRule> ReadRules(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new PolicyException("policy: want an object {\"rules\":[...]}");
        }
        var rules = new List<PolicyRule>();
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (JsonProperty p in root.EnumerateObject())
        {
            if (p.Name != "rules")
            {
                throw new PolicyException($"{p.Name}: unknown field (a policy has only \"rules\")");
            }
            if (p.Value.ValueKind != JsonValueKind.Array)
            {
                throw new PolicyException("rules: want an array of rules");
            }
            int i = 0;
            foreach (JsonElement r in p.Value.EnumerateArray())
            {
                if (i >= PolicyTable.MaxRules)
                {
                    throw new PolicyException($"rules: at most {PolicyTable.MaxRules} rules");
                }
                PolicyRule rule = ReadRule(r, $"rules[{i}]");
                if (!names.Add(rule.Name))
                {
                    throw new PolicyException($"rules[{i}].name: '{rule.Name}' is used by an earlier rule");
                }
                rules.Add(rule);
                i++;
            }
        }
        return rules;
    }

    private static PolicyRule ReadRule(JsonElement r, string at)
    {
        if (r.ValueKind != JsonValueKind.Object)
        {
            throw new PolicyException($"{at}: want an object with name, match and action");
        }
        string? name = null;
        RuleMatch match = new();
        RuleAction action = RuleAction.Allow;
        Impairment impair = new();
        foreach (JsonProperty p in r.EnumerateObject())
        {
            string field = $"{at}.{p.Name}";
            switch (p.Name)
            {
                case "name":
                    name = String(p.Value, field);
                    if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                    {
                        throw new PolicyException($"{field}: '{Shorten(name)}' is not a rule name (1-64 of A-Z a-z 0-9 . _ -)");
                    }
                    break;
                case "match":
                    match = ReadMatch(p.Value, field);
                    break;
                case "action":
                    action = String(p.Value, field) switch
                    {
                        "allow" => RuleAction.Allow,
                        "deny" => RuleAction.Deny,
                        "reject" => RuleAction.Reject,
                        string other => throw new PolicyException($"{field}: '{Shorten(other)}' is not allow, deny or reject"),
                    };
                    break;
                case "latency_ms":
                    impair = impair with { LatencyMs = (int)Integer(p.Value, field, 0, 60_000) };
                    break;
                case "jitter_ms":
                    impair = impair with { JitterMs = (int)Integer(p.Value, field, 0, 60_000) };
                    break;
                case "loss_pct":
                    impair = impair with { LossPct = Number(p.Value, field, 0, 100) };
                    break;
                case "rate_kbps":
                    impair = impair with { RateKbps = Integer(p.Value, field, 1, 100_000_000) };
                    break;
                case "reset_after_bytes":
                    impair = impair with { ResetAfterBytes = Integer(p.Value, field, 1, long.MaxValue / 2) };
                    break;
                default:
                    throw new PolicyException($"{field}: unknown field (a rule has name, match, action, latency_ms, jitter_ms, loss_pct, rate_kbps, reset_after_bytes)");
            }
        }
        if (name is null)
        {
            throw new PolicyException($"{at}.name: missing (every rule has a name: its counter and /api/rules/NAME)");
        }
        return new PolicyRule(name, match, action, impair);
    }

    private static RuleMatch ReadMatch(JsonElement m, string at)
    {
        if (m.ValueKind != JsonValueKind.Object)
        {
            throw new PolicyException($"{at}: want an object of conditions (cidr, port, ports, proto, dns, sni, host)");
        }
        RuleMatch match = new();
        bool hasPort = false;
        foreach (JsonProperty p in m.EnumerateObject())
        {
            string field = $"{at}.{p.Name}";
            switch (p.Name)
            {
                case "cidr":
                    string cidr = String(p.Value, field);
                    // The address must be the network itself: "10.0.0.1/8" is more likely a mistake than a wish for 10/8.
                    int slash = cidr.IndexOf('/', StringComparison.Ordinal);
                    if (slash < 0 || !IPNetwork.TryParse(cidr, out IPNetwork net) || !IPAddress.TryParse(cidr.AsSpan(0, slash), out IPAddress? given)
                        || !given.Equals(net.BaseAddress))
                    {
                        throw new PolicyException($"{field}: '{Shorten(cidr)}' is not a CIDR (ADDRESS/PREFIX with the host bits zero, e.g. 10.0.0.0/8 or fd00::/8)");
                    }
                    match = match with { Cidr = net };
                    break;
                case "port" or "ports":
                    if (hasPort)
                    {
                        throw new PolicyException($"{field}: give port or ports, not both");
                    }
                    hasPort = true;
                    (ushort lo, ushort hi) = Ports(p.Value, field);
                    match = match with { PortLow = lo, PortHigh = hi };
                    break;
                case "proto":
                    match = match with
                    {
                        Proto = String(p.Value, field) switch
                        {
                            "tcp" => RuleProto.Tcp,
                            "udp" => RuleProto.Udp,
                            "icmp" => RuleProto.Icmp,
                            string other => throw new PolicyException($"{field}: '{Shorten(other)}' is not tcp, udp or icmp"),
                        },
                    };
                    break;
                case "dns":
                    match = match with { Dns = NamePattern(p.Value, field) };
                    break;
                case "sni":
                    match = match with { Sni = NamePattern(p.Value, field) };
                    break;
                case "host":
                    match = match with { Host = NamePattern(p.Value, field) };
                    break;
                default:
                    throw new PolicyException($"{field}: unknown condition (cidr, port, ports, proto, dns, sni, host)");
            }
        }
        return match;
    }

    private static (ushort, ushort) Ports(JsonElement v, string field)
    {
        if (v.ValueKind == JsonValueKind.Number)
        {
            ushort port = (ushort)Integer(v, field, 1, 65535);
            return (port, port);
        }
        string text = String(v, field);
        string[] parts = text.Split('-');
        if (parts.Length is 1 or 2
            && ushort.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out ushort low)
            && ushort.TryParse(parts[^1], NumberStyles.None, CultureInfo.InvariantCulture, out ushort high)
            && low >= 1 && low <= high)
        {
            return (low, high);
        }
        throw new PolicyException($"{field}: '{Shorten(text)}' is not a port or a range LOW-HIGH within 1-65535");
    }

    private static string NamePattern(JsonElement v, string field)
    {
        string text = String(v, field).TrimEnd('.').ToLowerInvariant();
        string bare = text.StartsWith("*.", StringComparison.Ordinal) ? text[2..] : text;
        if (!Services.DnsRecord.IsDomainName(bare))
        {
            throw new PolicyException($"{field}: '{Shorten(text)}' is not a name or *.zone");
        }
        return text;
    }

    private static string String(JsonElement v, string field) =>
        v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new PolicyException($"{field}: want a string, got {Kind(v)}");

    private static long Integer(JsonElement v, string field, long min, long max)
    {
        if (v.ValueKind != JsonValueKind.Number)
        {
            throw new PolicyException($"{field}: want a number, got {Kind(v)}");
        }
        if (!v.TryGetInt64(out long n) || n < min || n > max)
        {
            throw new PolicyException($"{field}: {Shorten(v.GetRawText())} is not a whole number from {min} to {max}");
        }
        return n;
    }

    private static double Number(JsonElement v, string field, double min, double max)
    {
        if (v.ValueKind != JsonValueKind.Number)
        {
            throw new PolicyException($"{field}: want a number, got {Kind(v)}");
        }
        if (!v.TryGetDouble(out double n) || !double.IsFinite(n) || n < min || n > max)
        {
            throw new PolicyException($"{field}: {Shorten(v.GetRawText())} is not a number from {min} to {max}");
        }
        return n;
    }

    private static string Kind(JsonElement v) => v.ValueKind.ToString().ToLowerInvariant();

    /// <summary>Hostile values are quoted in errors, but never at length.</summary>
    private static string Shorten(string s) => s.Length <= 64 ? s : s[..61] + "...";

    /// <summary>The rules as the file format, with each rule's counters (<c>matches</c>, <c>bytes</c>, <c>dropped</c>, and <c>segments</c> once a loss_pct TCP flow had some) added.</summary>
    public static void Write(Utf8JsonWriter w, IReadOnlyList<PolicyRule> rules)
    {
        w.WriteStartObject();
        w.WriteStartArray("rules");
        foreach (PolicyRule r in rules)
        {
            w.WriteStartObject();
            w.WriteString("name", r.Name);
            w.WriteStartObject("match");
            RuleMatch m = r.Match;
            if (m.Cidr is IPNetwork net)
            {
                w.WriteString("cidr", net.ToString());
            }
            if (m.PortLow != 0 || m.PortHigh != ushort.MaxValue)
            {
                w.WriteString("ports", m.PortLow == m.PortHigh ? $"{m.PortLow}" : $"{m.PortLow}-{m.PortHigh}");
            }
            if (m.Proto != RuleProto.Any)
            {
                w.WriteString("proto", m.Proto.ToString().ToLowerInvariant());
            }
            WriteIf(w, "dns", m.Dns);
            WriteIf(w, "sni", m.Sni);
            WriteIf(w, "host", m.Host);
            w.WriteEndObject();
            w.WriteString("action", r.Action.ToString().ToLowerInvariant());
            Impairment i = r.Impair;
            WriteIf(w, "latency_ms", i.LatencyMs);
            WriteIf(w, "jitter_ms", i.JitterMs);
            if (i.LossPct > 0)
            {
                w.WriteNumber("loss_pct", i.LossPct);
            }
            WriteIf(w, "rate_kbps", i.RateKbps);
            WriteIf(w, "reset_after_bytes", i.ResetAfterBytes);
            w.WriteNumber("matches", r.Matches);
            w.WriteNumber("bytes", r.Bytes);
            w.WriteNumber("dropped", r.Dropped);
            if (r.Segments > 0)
            {
                w.WriteNumber("segments", r.Segments);
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }

    private static void WriteIf(Utf8JsonWriter w, string name, string? value)
    {
        if (value is not null)
        {
            w.WriteString(name, value);
        }
    }

    private static void WriteIf(Utf8JsonWriter w, string name, long value)
    {
        if (value > 0)
        {
            w.WriteNumber(name, value);
        }
    }
}
