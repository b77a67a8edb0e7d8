using System.Text;
using Kit.VpnKit.Policy;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Policy;

/// <summary>The policy format (with hostile documents), first-match decisions, names through DNS, sni/host from first bytes.</summary>
public sealed class PolicyTests
{
    private static List<PolicyRule> Parse(string json) => PolicyJson.ParseRules(Encoding.UTF8.GetBytes(json));

    private static string Error(string json) => Assert.Throws<PolicyException>(() => Parse(json)).Message;

    private static uint Ip(string s) => Ip4.Parse(s);

    [Fact]
    public void TheDocumentedExampleParsesAndRoundTrips()
    {
        List<PolicyRule> rules = Parse("""{"rules":[{"name":"ads","match":{"dns":"*.blocked.test"},"action":"reject"}]}""");
        PolicyRule r = Assert.Single(rules);
        Assert.Equal(("ads", "*.blocked.test", RuleAction.Reject), (r.Name, r.Match.Dns, r.Action));

        string all = """{"rules":[{"name":"x","match":{"cidr":"10.0.0.0/8","ports":"1000-2000","proto":"tcp","sni":"a.test","host":"*.b.test"},"action":"allow","latency_ms":200,"jitter_ms":5,"loss_pct":2.5,"rate_kbps":8000,"reset_after_bytes":100000}]}""";
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            PolicyJson.Write(w, Parse(all));
        }
        PolicyRule back = Assert.Single(PolicyJson.ParseRules(Strip(buffer.WrittenSpan)));
        Assert.Equal(Parse(all)[0].Match, back.Match);
        Assert.Equal(Parse(all)[0].Impair, back.Impair);
    }

    /// <summary>The writer adds counters, which a policy file does not have: remove them to read it back.</summary>
    private static byte[] Strip(ReadOnlySpan<byte> json) =>
        Encoding.UTF8.GetBytes(System.Text.RegularExpressions.Regex.Replace(Encoding.UTF8.GetString(json), ",\"(matches|bytes|dropped|segments)\":\\d+", ""));

    [Theory]
    [InlineData("""{"rules":[{"name":"a","match":{"cidr":"10.0.0.0/33"}}]}""", "rules[0].match.cidr")]
    [InlineData("""{"rules":[{"name":"a","match":{"cidr":"10.0.0.1/8"}}]}""", "rules[0].match.cidr")]
    [InlineData("""{"rules":[{"name":"a","match":{"cidr":"banana"}}]}""", "not a CIDR")]
    [InlineData("""{"rules":[{"name":"a","match":{"ports":"2000-1000"}}]}""", "rules[0].match.ports")]
    [InlineData("""{"rules":[{"name":"a","match":{"port":70000}}]}""", "rules[0].match.port")]
    [InlineData("""{"rules":[{"name":"a","match":{"proto":"sctp"}}]}""", "not tcp, udp or icmp")]
    [InlineData("""{"rules":[{"name":"a","match":{"dns":"bad name!"}}]}""", "rules[0].match.dns")]
    [InlineData("""{"rules":[{"name":"a","match":{"dsn":"x.test"}}]}""", "unknown condition")]
    [InlineData("""{"rules":[{"name":"a","action":"drop"}]}""", "rules[0].action")]
    [InlineData("""{"rules":[{"match":{}}]}""", "rules[0].name: missing")]
    [InlineData("""{"rules":[{"name":"a"},{"name":"a"}]}""", "rules[1].name")]
    [InlineData("""{"rules":[{"name":"a","latency_ms":1e300}]}""", "rules[0].latency_ms")]
    [InlineData("""{"rules":[{"name":"a","rate_kbps":99999999999999999999999}]}""", "rules[0].rate_kbps")]
    [InlineData("""{"rules":[{"name":"a","loss_pct":101}]}""", "rules[0].loss_pct")]
    [InlineData("""{"rules":[{"name":"a","loss_pct":"10"}]}""", "want a number")]
    [InlineData("""{"rules":{}}""", "rules: want an array")]
    [InlineData("""[]""", "want an object")]
    [InlineData("{\"rules\":[\n{\"name\":\"a\",,}]}", "line 2")]
    public void BadPoliciesSayWhereAndWhy(string json, string expected) => Assert.Contains(expected, Error(json));

    [Fact]
    public void HostileDocumentsAreRefusedCheaply()
    {
        Assert.Contains("not valid JSON", Error(new string('[', 100_000) + new string(']', 100_000)));
        Assert.Contains("not valid JSON", Error("""{"rules":[{"name":"a","match":{"dns":{"x":{"y":1}}}}]}"""));
        Assert.Contains("at most", Assert.Throws<PolicyException>(() => PolicyJson.ParseRules(new byte[PolicyJson.MaxBytes + 1])).Message);
        string many = "{\"rules\":[" + string.Join(",", Enumerable.Range(0, PolicyTable.MaxRules + 1).Select(i => $"{{\"name\":\"r{i}\"}}")) + "]}";
        Assert.Contains("at most 1024 rules", Error(many));
        Assert.Contains("...", Error("{\"rules\":[{\"name\":\"" + new string('n', 10_000) + "\"}]}"));
        // Arbitrary bytes never escape as anything but a PolicyException.
        var random = new Random(17);
        for (int i = 0; i < 2000; i++)
        {
            byte[] junk = new byte[random.Next(0, 200)];
            random.NextBytes(junk);
            if (i % 2 == 0)
            {
                byte[] prefix = Encoding.UTF8.GetBytes("{\"rules\":[{\"name\":\"a\",\"match\":{\"cidr\":\"");
                junk = [.. prefix, .. junk];
            }
            try
            {
                PolicyJson.ParseBody(junk, out _);
            }
            catch (PolicyException)
            {
            }
        }
    }

    [Fact]
    public void IPv6NetworksMatchIPv6FlowsOnlyAndRulesWithoutACidrMatchBothFamilies()
    {
        List<PolicyRule> rules = Parse("""
            {"rules":[
              {"name":"v6","match":{"cidr":"fd00:a5e::/64"},"action":"deny"},
              {"name":"v4","match":{"cidr":"10.0.0.0/8"},"action":"reject"},
              {"name":"names","match":{"dns":"*.test"},"action":"reject"},
              {"name":"smtp","match":{"port":25},"action":"reject"}
            ]}
            """);
        Assert.Equal(System.Net.Sockets.AddressFamily.InterNetworkV6, rules[0].Match.Cidr!.Value.BaseAddress.AddressFamily);
        UInt128 named = Ip6.Parse("fd00:a5f::8");
        var t = new PolicyTable(f => f.Ipv6 && f.RemoteIp6 == named ? "a.test" : null);
        t.ReplaceAll(rules);
        Assert.Equal("v4", t.Decide(new FlowFacts(RuleProto.Tcp, Ip("10.0.0.1"), 80), out _)?.Name);
        Assert.Equal("v6", t.Decide(new FlowFacts(RuleProto.Tcp, 0, 80, RemoteIp6: Ip6.Parse("fd00:a5e::7")), out _)?.Name);
        // Outside the v6 network: no cidr rule matches; the dns one matches the address an AAAA answer named; the port rule.
        Assert.Null(t.Decide(new FlowFacts(RuleProto.Tcp, 0, 80, RemoteIp6: Ip6.Parse("fd00:a5f::7")), out _));
        Assert.Equal("names", t.Decide(new FlowFacts(RuleProto.Tcp, 0, 80, RemoteIp6: named), out _)?.Name);
        Assert.Equal("smtp", t.Decide(new FlowFacts(RuleProto.Tcp, 0, 25, RemoteIp6: Ip6.Parse("2001:db8::1")), out _)?.Name);
    }

    [Fact]
    public void FirstMatchWinsAndIsCounted()
    {
        var t = new PolicyTable(f => f.RemoteIp == Ip("192.168.65.2") ? "a.blocked.test" : null);
        t.ReplaceAll(Parse("""
            {"rules":[
              {"name":"web","match":{"cidr":"10.1.0.0/16","ports":"80-443","proto":"tcp"},"action":"allow"},
              {"name":"ten","match":{"cidr":"10.0.0.0/8"},"action":"deny"},
              {"name":"ads","match":{"dns":"*.blocked.test"},"action":"reject"},
              {"name":"dns53","match":{"port":53,"proto":"udp"},"action":"allow","loss_pct":10},
              {"name":"ping","match":{"proto":"icmp"},"action":"reject"}
            ]}
            """));
        Assert.Equal("web", t.Decide(new(RuleProto.Tcp, Ip("10.1.2.3"), 443), out _)?.Name);
        Assert.Equal("ten", t.Decide(new(RuleProto.Tcp, Ip("10.1.2.3"), 22), out _)?.Name);
        Assert.Equal("ten", t.Decide(new(RuleProto.Udp, Ip("10.9.9.9"), 80), out _)?.Name);
        Assert.Equal("ads", t.Decide(new(RuleProto.Tcp, Ip("192.168.65.2"), 8080), out _)?.Name);
        Assert.Equal("dns53", t.Decide(new(RuleProto.Udp, Ip("1.1.1.1"), 53), out _)?.Name);
        Assert.Equal("ping", t.Decide(new(RuleProto.Icmp, Ip("1.1.1.1"), 0), out _)?.Name);
        Assert.Null(t.Decide(new(RuleProto.Tcp, Ip("1.1.1.1"), 80), out bool needStream));
        Assert.False(needStream);
        Assert.Equal([1L, 2, 1, 1, 1], t.Rules.Select(r => r.Matches));
    }

    [Fact]
    public void DnsWildcardsMatchNamesUnderTheZoneOnly()
    {
        Assert.True(RuleMatch.NameMatches("*.blocked.test", "ads.blocked.test"));
        Assert.True(RuleMatch.NameMatches("*.blocked.test", "A.B.Blocked.Test."));
        Assert.False(RuleMatch.NameMatches("*.blocked.test", "blocked.test"));
        Assert.False(RuleMatch.NameMatches("*.blocked.test", "notblocked.test"));
        Assert.True(RuleMatch.NameMatches("exact.test", "EXACT.test"));
        Assert.False(RuleMatch.NameMatches("exact.test", null));
    }

    [Fact]
    public void NamesComeFromTheForwardersAnswers()
    {
        var names = new Kit.VpnKit.Inspect.AddressNames();
        var t = new PolicyTable(names.Of);
        t.ReplaceAll(Parse("""{"rules":[{"name":"ads","match":{"dns":"*.blocked.test"},"action":"reject"}]}"""));
        Assert.Null(t.Decide(new(RuleProto.Tcp, Ip("10.1.2.3"), 80), out _));
        // "x.blocked.test A" answered with 10.1.2.3 (RFC 1035 §4.1; the answer's name points at the question).
        byte[] q = [0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0, 1, (byte)'x', 7, .. "blocked"u8, 4, .. "test"u8, 0, 0, 1, 0, 1];
        names.Learn("x.blocked.test", [.. q, 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, 3]);
        Assert.Equal("ads", t.Decide(new(RuleProto.Tcp, Ip("10.1.2.3"), 80), out _)?.Name);
        // "x.blocked.test AAAA" answered with 2001:db8::7 (RFC 3596 §2.2: type 28, 16 bytes of address).
        UInt128 v6 = Ip6.Parse("2001:db8::7");
        Assert.Null(t.Decide(new(RuleProto.Tcp, 0, 80, RemoteIp6: v6), out _));
        byte[] q6 = [.. q[..^4], 0, 28, 0, 1];
        byte[] address = new byte[16];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt128BigEndian(address, v6);
        names.Learn("x.blocked.test", [.. q6, 0xC0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 16, .. address]);
        Assert.Equal("ads", t.Decide(new(RuleProto.Tcp, 0, 80, RemoteIp6: v6), out _)?.Name);
        // A record whose length does not fit its type teaches nothing.
        names.Learn("y.blocked.test", [.. q6, 0xC0, 12, 0, 28, 0, 1, 0, 0, 0, 60, 0, 4, 10, 9, 9, 9]);
        Assert.Null(t.Decide(new(RuleProto.Tcp, Ip("10.9.9.9"), 80), out _));
    }

    [Fact]
    public void SniAndHostRulesWaitForTheStreamThenDecide()
    {
        var t = new PolicyTable(_ => null);
        t.ReplaceAll(Parse("""
            {"rules":[
              {"name":"tls","match":{"sni":"*.bad.test"},"action":"reject"},
              {"name":"web","match":{"host":"www.bad.test","port":80},"action":"deny"},
              {"name":"rest","match":{"proto":"tcp"},"action":"allow","rate_kbps":100}
            ]}
            """));
        Assert.Null(t.Decide(new(RuleProto.Tcp, Ip("10.0.0.1"), 443), out bool need));
        Assert.True(need);
        Assert.Null(t.Decide(new(RuleProto.Udp, Ip("10.0.0.1"), 443), out need)); // sni/host rules are about TCP streams
        Assert.False(need);
        Assert.Equal("tls", t.Decide(new(RuleProto.Tcp, Ip("10.0.0.1"), 443, Sni: "api.bad.test", StreamKnown: true), out _)?.Name);
        Assert.Equal("web", t.Decide(new(RuleProto.Tcp, Ip("10.0.0.1"), 80, Host: "www.bad.test", StreamKnown: true), out _)?.Name);
        Assert.Equal("rest", t.Decide(new(RuleProto.Tcp, Ip("10.0.0.1"), 80, Host: "good.test", StreamKnown: true), out _)?.Name);
    }

    [Fact]
    public void FirstBytesFindHostAndSniOrKnowThereIsNone()
    {
        byte[] get = "GET /x HTTP/1.1\r\nUser-Agent: t\r\nHOST: WWW.Bad.Test:8080\r\n\r\n"u8.ToArray();
        for (int n = 0; n < get.Length; n++)
        {
            Assert.False(FirstBytes.TryRead(get.AsSpan(0, n), ended: false, out _, out _), $"decided after {n} bytes");
        }
        Assert.True(FirstBytes.TryRead(get, false, out string? sni, out string? host));
        Assert.Equal((null, "www.bad.test"), (sni, host));
        Assert.True(FirstBytes.TryRead("SSH-2.0-x\r\n"u8, false, out _, out host));
        Assert.Null(host);
        Assert.True(FirstBytes.TryRead("GET / HTTP/1.0\r\n\r\n"u8, false, out _, out host));
        Assert.Null(host);
        Assert.True(FirstBytes.TryRead("GET / HTTP/1.1\r\nX: y"u8, ended: true, out _, out host));
        Assert.True(FirstBytes.TryRead(Encoding.ASCII.GetBytes("GET / HTTP/1.1\r\n" + new string('a', FirstBytes.MaxHead)), false, out _, out host));
        Assert.Null(host);

        byte[] hello = ClientHello("api.bad.test");
        Assert.False(FirstBytes.TryRead(hello.AsSpan(0, 20), false, out _, out _));
        Assert.True(FirstBytes.TryRead(hello, false, out sni, out _));
        Assert.Equal("api.bad.test", sni);
    }

    /// <summary>A minimal TLS 1.2 record holding a ClientHello with one server_name extension (RFC 6066 §3).</summary>
    private static byte[] ClientHello(string name)
    {
        byte[] n = Encoding.ASCII.GetBytes(name);
        byte[] ext = [0, 0, 0, (byte)(n.Length + 5), 0, (byte)(n.Length + 3), 0, 0, (byte)n.Length, .. n];
        byte[] body = [3, 3, .. new byte[32], 0, 0, 2, 0x13, 1, 1, 0, 0, (byte)ext.Length, .. ext];
        byte[] hs = [1, 0, (byte)(body.Length >> 8), (byte)body.Length, .. body];
        return [0x16, 3, 1, (byte)(hs.Length >> 8), (byte)hs.Length, .. hs];
    }

    [Fact]
    public void PutReplacesByNameInPlaceAndRemoveDeletes()
    {
        var t = new PolicyTable(_ => null);
        t.ReplaceAll(Parse("""{"rules":[{"name":"a"},{"name":"b"}]}"""));
        Assert.False(t.Put(Parse("""{"rules":[{"name":"c","action":"deny"}]}""")[0]));
        Assert.True(t.Put(Parse("""{"rules":[{"name":"a","action":"reject"}]}""")[0]));
        Assert.Equal(["a", "b", "c"], t.Rules.Select(r => r.Name));
        Assert.Equal(RuleAction.Reject, t.Rules[0].Action);
        Assert.True(t.Remove("b"));
        Assert.False(t.Remove("b"));
        Assert.Equal(["a", "c"], t.Rules.Select(r => r.Name));
    }

    [Fact]
    public void TokenBucketHoldsTheRate()
    {
        // 8000 kbps = 1000 bytes/ms: over 10 simulated seconds a greedy sender moves 10 MB plus the first burst.
        var b = new TokenBucket(8000, now: 0);
        long moved = 0;
        for (long now = 0; now < 10_000; now++)
        {
            int n = b.Allow(64 * 1024, now);
            b.Take(n);
            moved += n;
        }
        Assert.InRange(moved, 10_000_000 - 1000, 10_000_000 + 20_000 + 1000);
        var slow = new TokenBucket(8, now: 0); // 1 byte/ms
        slow.Take(slow.Allow(1 << 20, 0));
        Assert.Equal(0, slow.Allow(4096, 1));
        Assert.Equal(TokenBucket.MinChunk, slow.ReadyAt(4096, 1)); // 1 byte in the bucket at 1 ms, 1,024 at 1,024 ms
    }

    /// <summary>
    /// UDP's policer: 20 Mbit/s of 1,000-byte datagrams offered to a 5,000 kbps bucket for 10 simulated seconds, a quarter
    /// conform (5 Mbit/s plus the first burst), the rest are refused; a datagram larger than the bucket still goes once
    /// it is full (in debt), never for ever refused.
    /// </summary>
    [Fact]
    public void TokenBucketPolicesDatagramsToTheRate()
    {
        var b = new TokenBucket(5000, now: 0); // 625 bytes/ms
        long passed = 0, refused = 0;
        for (long us = 0; us < 10_000_000; us += 400) // one datagram every 0.4 ms: 20 Mbit/s
        {
            if (b.TryTake(1000, us / 1000))
            {
                passed += 1000;
            }
            else
            {
                refused++;
            }
        }
        Assert.InRange(passed, 6_250_000 - 1000, 6_250_000 + 16 * 1024 + 1000);
        Assert.InRange(refused, 18_000, 19_000);
        // It starts with 20 ms of rate (16 KiB here) and holds 100 ms (62,500 bytes): a 100,000-byte datagram waits for a
        // full bucket, then goes and leaves 37,500 owed, which 60 ms of refill pays back.
        var big = new TokenBucket(5000, now: 0);
        Assert.False(big.TryTake(100_000, 0));
        Assert.True(big.TryTake(100_000, 80));
        Assert.False(big.TryTake(1, 100));
        Assert.True(big.TryTake(1, 141));
        Assert.True(big.TryTake(100_000, 300));
    }

    [Fact]
    public void DelayLineKeepsOrderAndItsBound()
    {
        using var d = new DelayLine(200, 50, new Random(3));
        long lastDue = 0;
        for (int i = 0; i < 100 && !d.Full; i++)
        {
            byte[] buf = d.Rent();
            buf[0] = (byte)i;
            d.Add(buf, Math.Min(buf.Length, 4096), now: i);
            Assert.True(d.NextDue >= 150);
        }
        Assert.True(d.Bytes <= DelayLine.Cap);
        Assert.True(d.Due(149).IsEmpty);
        for (int i = 0; !d.IsEmpty; i++)
        {
            long due = d.NextDue;
            Assert.True(due >= lastDue);
            lastDue = due;
            ReadOnlySpan<byte> s = d.Due(due);
            Assert.Equal((byte)i, s[0]);
            d.Consume(s.Length);
        }
        Assert.Equal(0, d.Bytes);
    }
}
