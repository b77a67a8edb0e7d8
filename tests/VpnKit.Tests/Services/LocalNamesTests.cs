using System.Buffers.Binary;
using System.Net;
using Kit.VpnKit.Services;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Services;

/// <summary>The names the forwarder answers itself, and the files it follows (issue 17, item 6).</summary>
public sealed class LocalNamesTests : IDisposable
{
    private static readonly IPAddress Alias = IPAddress.Parse("192.168.65.2");
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-names-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void HostsFileLoopbackNamesBecomeTheHostAliasAndLocalhostStaysTheGuests()
    {
        Dictionary<string, IPAddress[]> names = LocalNames.ParseHosts("""
            127.0.0.1 localhost myapp.test   # comment
            127.0.1.1 builder
            ::1 ip6-localhost six-loop.test
            10.0.0.9 A.Example.  b.example
            10.0.0.10 b.example
            fe80::1%eth0 scoped.test
            garbage
            10.0.0.11 bad..name under_score.test
            10.0.0.12 x.localhost
            """, Alias);
        Assert.Equal([Alias], names["myapp.test"]);
        Assert.Equal([Alias], names["builder"]);
        Assert.False(names.ContainsKey("localhost"));
        Assert.False(names.ContainsKey("x.localhost"));
        Assert.False(names.ContainsKey("six-loop.test")); // no IPv6 alias yet
        Assert.False(names.ContainsKey("scoped.test"));
        Assert.False(names.ContainsKey("bad..name"));
        Assert.Equal([IPAddress.Parse("10.0.0.9")], names["a.example"]);
        Assert.Equal([IPAddress.Parse("10.0.0.9"), IPAddress.Parse("10.0.0.10")], names["b.example"]);
        Assert.Equal([IPAddress.Parse("10.0.0.11")], names["under_score.test"]);
    }

    [Fact]
    public void WithoutHostLoopbackTheHostsLoopbackNamesAreNotAnswered()
    {
        Dictionary<string, IPAddress[]> names = LocalNames.ParseHosts("127.0.0.1 myapp.test\n10.0.0.1 other.test\n", loopbackAs: null);
        Assert.False(names.ContainsKey("myapp.test"));
        Assert.True(names.ContainsKey("other.test"));
    }

    [Fact]
    public void RecordsExactBeforeZonesLongestZoneFirstAndBuiltInsFirstOfAll()
    {
        var names = new LocalNames(Alias, ["host.internal"],
            [DnsRecord.Parse("*.test=10.0.0.1"), DnsRecord.Parse("*.deep.test=10.0.0.2"), DnsRecord.Parse("exact.deep.test=10.0.0.3"),
             DnsRecord.Parse("host.internal=10.9.9.9")],
            hostsPath: null, hostLoopback: true);
        Assert.True(names.TryFind("host.internal", out IPAddress[] a) && a.Single().Equals(Alias));
        Assert.True(names.TryFind("exact.deep.test", out a) && a.Single().Equals(IPAddress.Parse("10.0.0.3")));
        Assert.True(names.TryFind("x.deep.test", out a) && a.Single().Equals(IPAddress.Parse("10.0.0.2")));
        Assert.True(names.TryFind("y.test", out a) && a.Single().Equals(IPAddress.Parse("10.0.0.1")));
        Assert.False(names.TryFind("test", out _)); // *.test is under the zone, not the zone itself
        Assert.False(names.TryFind("xtest", out _));
    }

    [Theory]
    [InlineData("noequals")]
    [InlineData("name=not-an-ip")]
    [InlineData("=10.0.0.1")]
    [InlineData("bad name=10.0.0.1")]
    [InlineData("*.=10.0.0.1")]
    public void BadRecordsAreRefused(string text) => Assert.Throws<FormatException>(() => DnsRecord.Parse(text));

    [Fact]
    public void TheHostsFileIsFollowedAsItChanges()
    {
        string hosts = Path.Combine(_dir, "hosts");
        File.WriteAllText(hosts, "10.0.0.1 one.test\n");
        var names = new LocalNames(Alias, [], [], hosts, hostLoopback: true);
        Assert.True(names.TryFind("one.test", out _));
        // Replaced by rename, as editors and resolvconf do; seen within the check interval.
        File.WriteAllText(hosts + ".new", "10.0.0.2 two.test\n");
        File.Move(hosts + ".new", hosts, overwrite: true);
        Assert.True(SpinWait.SpinUntil(() => names.TryFind("two.test", out _), TimeSpan.FromSeconds(5)));
        Assert.False(names.TryFind("one.test", out _));
        File.Delete(hosts);
        Assert.True(SpinWait.SpinUntil(() => !names.TryFind("two.test", out _), TimeSpan.FromSeconds(5)));
    }

    [Fact]
    public void ResolvConfTakesTheFirstThreeUsableNameservers()
    {
        List<IPEndPoint> list = DnsForwarder.ParseResolvConf("""
            # generated
            search example
            nameserver 10.0.0.1
            nameserver fe80::1
            nameserver bogus
            nameserver 10.0.0.2
            nameserver 10.0.0.3
            nameserver 10.0.0.4
            """);
        Assert.Equal(["10.0.0.1:53", "10.0.0.2:53", "10.0.0.3:53"], list.Select(e => e.ToString()));
    }

    [Fact]
    public void ResolvConfTakesIPv6NameserversButNotALinkLocalOneWithoutItsInterface()
    {
        List<IPEndPoint> list = DnsForwarder.ParseResolvConf("""
            nameserver fe80::1
            nameserver ::1
            nameserver 10.0.0.1
            nameserver fd00::53
            """);
        Assert.Equal(["[::1]:53", "10.0.0.1:53", "[fd00::53]:53"], list.Select(e => e.ToString()));
    }

    [Theory]
    [InlineData(1, "10.0.0.1", 1)]
    [InlineData(28, "fd00::1", 1)]
    [InlineData(1, "fd00::1", 0)] // A for a name with only an IPv6 address: no data
    [InlineData(16, "10.0.0.1", 0)] // TXT: no data, but the name exists
    public async Task LocalAnswersCarryTheFamilyAskedFor(ushort type, string address, int expected)
    {
        var dns = new DnsForwarder([], null, new LocalNames(Alias, [], [DnsRecord.Parse($"n.test={address}")], null, true), NullLogger.Instance);
        byte[] q = [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 1, (byte)'N', 4, (byte)'t', (byte)'e', (byte)'s', (byte)'t', 0, 0, (byte)type, 0, 1];
        byte[]? r = await dns.ResolveAsync(q, cancel: TestContext.Current.CancellationToken);
        Assert.NotNull(r);
        Assert.Equal(0x1234, BinaryPrimitives.ReadUInt16BigEndian(r));
        Assert.Equal(0x84, r[2] & 0x84); // QR and AA
        Assert.Equal(0, r[3] & 0x0F); // NOERROR
        Assert.Equal(expected, BinaryPrimitives.ReadUInt16BigEndian(r.AsSpan(6)));
        if (expected == 1)
        {
            byte[] want = IPAddress.Parse(address).GetAddressBytes();
            Assert.Equal(want, r.AsSpan(r.Length - want.Length).ToArray());
        }
    }

    [Fact]
    public void HostNamesAnswerBothFamiliesWhenTheGatewayHasIpv6()
    {
        IPAddress alias6 = IPAddress.Parse("fd00:6b69:7400::2");
        Assert.True(new LocalNames(Alias, ["host.internal"], [], null, true, alias6).TryFind("host.internal", out IPAddress[] both));
        Assert.Equal([Alias, alias6], both);
        Assert.True(new LocalNames(Alias, ["host.internal"], [], null, true).TryFind("host.internal", out IPAddress[] v4));
        Assert.Equal([Alias], v4);
    }
}
