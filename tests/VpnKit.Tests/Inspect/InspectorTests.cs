using Kit.VpnKit.Inspect;

namespace Kit.VpnKit.Tests.Inspect;

/// <summary>The inspector's records: bounded rings, DNS names for flows, ends, HAR.</summary>
public sealed class InspectorTests
{
    [Fact]
    public void RingsKeepOnlyTheNewest()
    {
        var i = new Inspector(new InspectorOptions { MaxFlows = 4, MaxDns = 2 });
        for (ushort p = 1; p <= 10; p++)
        {
            i.OpenFlow("udp", 1, p, 2, 53);
            i.Dns(1, $"n{p}.test", 1, [], "cache", 0.1, cacheHit: true);
        }
        Assert.Equal([7, 8, 9, 10], i.Flows().Select(f => f.GuestPort));
        Assert.Equal(["n9.test", "n10.test"], i.DnsLog().Select(d => d.Name));
    }

    /// <summary>A response to "shop.test A" with two addresses (RFC 1035 §4.1), the name compressed to the question.</summary>
    private static byte[] Answer()
    {
        byte[] q = [0x12, 0x34, 0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0, 4, (byte)'s', (byte)'h', (byte)'o', (byte)'p', 4, (byte)'t', (byte)'e', (byte)'s', (byte)'t', 0, 0, 1, 0, 1];
        byte[] rr(byte last) => [0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 1, 2, last];
        return [.. q, .. rr(3), .. rr(4)];
    }

    [Fact]
    public void FlowsAreNamedFromTheGuestsDnsAnswers()
    {
        var i = new Inspector(new InspectorOptions());
        i.Dns(0xC0A84103, "shop.test", 1, Answer(), "127.0.0.1:53", 1.5, cacheHit: false);
        DnsEntry e = Assert.Single(i.DnsLog());
        Assert.Equal(("shop.test", "A", "NOERROR", "10.1.2.3, 10.1.2.4", "127.0.0.1:53"), (e.Name, e.Type, e.Rcode, e.Answer, e.Source));
        FlowRecord f = i.OpenFlow("tcp", 0xC0A84103, 5000, 0x0A010204, 443);
        Assert.Equal("shop.test", f.Name);
        Assert.Null(i.OpenFlow("tcp", 0xC0A84103, 5001, 0x0A010205, 443).Name);
    }

    [Fact]
    public void TruncatedDnsAnswersAreReadAsFarAsTheyGo()
    {
        var i = new Inspector(new InspectorOptions());
        byte[] a = Answer();
        for (int n = 0; n <= a.Length; n++)
        {
            i.Dns(1, "shop.test", 1, a.AsSpan(0, n), "x", 0, false);
        }
        Assert.Equal(a.Length + 1, i.DnsLog().Count);
    }

    [Fact]
    public void AFlowEndsOnceWithItsFirstReason()
    {
        var i = new Inspector(new InspectorOptions());
        FlowRecord f = i.OpenFlow("tcp", 1, 2, 3, 4);
        i.CloseFlow(f, FlowEnd.Refused);
        i.CloseFlow(f, FlowEnd.Rst);
        Assert.Equal("refused", Assert.Single(i.Flows()).Ended);
    }

    [Fact]
    public void EchoesToOneAddressAreOneIcmpFlow()
    {
        var i = new Inspector(new InspectorOptions());
        for (int k = 0; k < 3; k++)
        {
            i.IcmpEcho(1, 9, 56, reply: false);
            i.IcmpEcho(1, 9, 56, reply: true);
        }
        FlowView f = Assert.Single(i.Flows());
        Assert.Equal(("icmp", 3L, 3L, 168L), (f.Proto, f.PacketsOut, f.PacketsIn, f.BytesIn));
    }

    [Fact]
    public void LiveEventsCarryEachRecord()
    {
        var i = new Inspector(new InspectorOptions());
        var events = i.Subscribe(out IDisposable lease);
        FlowRecord f = i.OpenFlow("tcp", 1, 2, 3, 80);
        StreamTap tap = i.TapFor(f)!;
        tap.FromGuest("GET / HTTP/1.1\r\n\r\n"u8);
        tap.FromHost("HTTP/1.1 204 No Content\r\n\r\n"u8);
        i.CloseFlow(f, FlowEnd.Fin);
        lease.Dispose();
        var kinds = new List<string>();
        while (events.TryRead(out InspectEvent? e))
        {
            kinds.Add(e.Kind);
        }
        Assert.Equal(["flow-open", "http", "flow-end"], kinds);
    }

    [Fact]
    public void HarHasAnEntryPerExchange()
    {
        var i = new Inspector(new InspectorOptions());
        FlowRecord f = i.OpenFlow("tcp", 0xC0A84103, 2, 0xC0A84102, 8080);
        StreamTap tap = i.TapFor(f)!;
        tap.FromGuest("GET /p?q=1 HTTP/1.1\r\nHost: h.test:8080\r\n\r\n"u8);
        tap.FromHost("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"u8);
        string json = System.Text.Json.JsonSerializer.Serialize(HarBuilder.Build(i.Exchanges(), "1"), InspectJson.Default.Har);
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        var entry = doc.RootElement.GetProperty("log").GetProperty("entries")[0];
        Assert.Equal("1.2", doc.RootElement.GetProperty("log").GetProperty("version").GetString());
        Assert.Equal("http://h.test:8080/p?q=1", entry.GetProperty("request").GetProperty("url").GetString());
        Assert.Equal(200, entry.GetProperty("response").GetProperty("status").GetInt32());
        Assert.Equal(2, entry.GetProperty("response").GetProperty("content").GetProperty("size").GetInt64());
        Assert.True(entry.GetProperty("timings").GetProperty("wait").GetDouble() >= 0);
    }
}
