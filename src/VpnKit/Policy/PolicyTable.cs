using System.Net;
using System.Net.Sockets;

namespace Kit.VpnKit.Policy;

/// <summary>What is known of a new flow when a rule is picked for it.</summary>
/// <param name="RemoteIp">The destination as the guest sees it (192.168.65.2 is the host).</param>
/// <param name="Sni">The ClientHello's server name, once <paramref name="StreamKnown"/>.</param>
/// <param name="Host">The first request's Host, once <paramref name="StreamKnown"/>.</param>
/// <param name="StreamKnown">The guest's first bytes have been read (TCP): sni/host conditions can be decided.</param>
/// <param name="RemoteIp6">The destination of an IPv6 flow (NAT66), 0 for IPv4 (then <paramref name="RemoteIp"/> is it).</param>
public readonly record struct FlowFacts(RuleProto Proto, uint RemoteIp, ushort RemotePort, string? Sni = null, string? Host = null, bool StreamKnown = false,
    UInt128 RemoteIp6 = default)
{
    public bool Ipv6 => RemoteIp6 != 0;
}

/// <summary>
/// The rule list (<c>--policy FILE</c>, changed at run time through <c>/api/rules</c>): checked in order, first match
/// wins, no match allows. Pure: it holds no sockets and reads no clock. The list is an immutable array swapped whole, so
/// the NAT reads it without a lock while the API changes it; a flow keeps the rule it was given (a change takes effect for
/// the next flow).
/// </summary>
/// <param name="nameOf">The name the guest resolved a flow's destination from (the forwarder's A and AAAA answers), or null.</param>
public sealed class PolicyTable(Func<FlowFacts, string?> nameOf)
{
    /// <summary>Enough for any hand-written policy; a bound on what one POST can make every new flow walk.</summary>
    public const int MaxRules = 1024;

    private readonly object _writeGate = new();
    private volatile PolicyRule[] _rules = [];

    /// <summary>The rules, in order (a snapshot).</summary>
    public IReadOnlyList<PolicyRule> Rules => _rules;

    /// <summary>
    /// Raised after the list changed (replaced, a rule put or removed), outside the write lock: a capture of a rule that
    /// is gone ends (<see cref="Capture.LiveCaptures"/>).
    /// </summary>
    public event Action? Changed;

    /// <summary>Whether any rule exists: with none, the NAT skips every lookup.</summary>
    public bool IsEmpty => _rules.Length == 0;

    /// <summary>
    /// The first rule that holds for <paramref name="f"/>, counted, or null (allowed, no impairment). A rule with sni/host
    /// conditions whose other conditions hold cannot be decided before the stream is read: then
    /// <paramref name="needStream"/> is set and null returned, nothing counted, and the caller asks again with
    /// <see cref="FlowFacts.StreamKnown"/> once it has the guest's first bytes.
    /// </summary>
    public PolicyRule? Decide(in FlowFacts f, out bool needStream)
    {
        needStream = false;
        PolicyRule[] rules = _rules;
        bool nameLooked = false;
        string? name = null;
        foreach (PolicyRule r in rules)
        {
            RuleMatch m = r.Match;
            if (m.Proto != RuleProto.Any && m.Proto != f.Proto)
            {
                continue;
            }
            if (m.Cidr is IPNetwork net && !(f.Ipv6 ? Contains(net, f.RemoteIp6) : Contains(net, f.RemoteIp)))
            {
                continue;
            }
            if (f.Proto != RuleProto.Icmp && (f.RemotePort < m.PortLow || f.RemotePort > m.PortHigh))
            {
                continue;
            }
            if (f.Proto == RuleProto.Icmp && (m.PortLow != 0 || m.PortHigh != ushort.MaxValue))
            {
                continue; // Echoes have no port: a rule about ports is not about them.
            }
            if (m.Dns is not null)
            {
                if (!nameLooked)
                {
                    name = nameOf(f);
                    nameLooked = true;
                }
                if (!RuleMatch.NameMatches(m.Dns, name))
                {
                    continue;
                }
            }
            if (m.NeedsStream)
            {
                if (f.Proto != RuleProto.Tcp)
                {
                    continue;
                }
                if (!f.StreamKnown)
                {
                    needStream = true;
                    return null;
                }
                if ((m.Sni is not null && !RuleMatch.NameMatches(m.Sni, f.Sni)) || (m.Host is not null && !RuleMatch.NameMatches(m.Host, f.Host)))
                {
                    continue;
                }
            }
            r.Count();
            return r;
        }
        return null;
    }

    internal static bool Contains(IPNetwork net, UInt128 ip)
    {
        if (net.BaseAddress.AddressFamily != AddressFamily.InterNetworkV6)
        {
            return false;
        }
        Span<byte> b = stackalloc byte[16];
        net.BaseAddress.TryWriteBytes(b, out _);
        UInt128 mask = net.PrefixLength == 0 ? 0 : UInt128.MaxValue << (128 - net.PrefixLength);
        return (ip & mask) == (System.Buffers.Binary.BinaryPrimitives.ReadUInt128BigEndian(b) & mask);
    }

    internal static bool Contains(IPNetwork net, uint ip)
    {
        if (net.BaseAddress.AddressFamily != AddressFamily.InterNetwork)
        {
            return false;
        }
        Span<byte> b = stackalloc byte[4];
        net.BaseAddress.TryWriteBytes(b, out _);
        uint baseIp = System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(b);
        uint mask = net.PrefixLength == 0 ? 0 : uint.MaxValue << (32 - net.PrefixLength);
        return (ip & mask) == (baseIp & mask);
    }

    /// <summary>Replaces the whole list.</summary>
    public void ReplaceAll(IReadOnlyList<PolicyRule> rules)
    {
        if (rules.Count > MaxRules)
        {
            throw new PolicyException($"rules: at most {MaxRules} rules, got {rules.Count}");
        }
        lock (_writeGate)
        {
            _rules = [.. rules];
        }
        Changed?.Invoke();
    }

    /// <summary>Replaces the rule of the same name where it stands (its counters start over), or appends it. True: replaced.</summary>
    public bool Put(PolicyRule rule)
    {
        bool replaced = PutLocked(rule);
        Changed?.Invoke();
        return replaced;
    }

    private bool PutLocked(PolicyRule rule)
    {
        lock (_writeGate)
        {
            PolicyRule[] rules = _rules;
            for (int i = 0; i < rules.Length; i++)
            {
                if (rules[i].Name == rule.Name)
                {
                    PolicyRule[] copy = [.. rules];
                    copy[i] = rule;
                    _rules = copy;
                    return true;
                }
            }
            if (rules.Length >= MaxRules)
            {
                throw new PolicyException($"rules: at most {MaxRules} rules");
            }
            _rules = [.. rules, rule];
            return false;
        }
    }

    /// <summary>Removes the named rule; false when there is none.</summary>
    public bool Remove(string name)
    {
        lock (_writeGate)
        {
            PolicyRule[] rules = _rules;
            int i = Array.FindIndex(rules, r => r.Name == name);
            if (i < 0)
            {
                return false;
            }
            _rules = [.. rules.AsSpan(0, i), .. rules.AsSpan(i + 1)];
        }
        Changed?.Invoke();
        return true;
    }
}

/// <summary>A policy that cannot be used, with the field (or line) and the reason in its message.</summary>
public sealed class PolicyException(string message) : Exception(message);
