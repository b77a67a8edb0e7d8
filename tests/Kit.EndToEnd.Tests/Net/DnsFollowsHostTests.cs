using System.Net;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// The gateway's DNS follows the host (issue 17, item 6): resolv.conf changes are followed without a restart, names
/// come from a hosts file and from --dns-record, and the guest's DHCP client gets the --dns-search list. The guest is a
/// namespace under `kit net run` with busybox's nslookup, wget and udhcpc; the upstreams are servers this test runs on
/// 127.0.0.2:53 and 127.0.0.3:53 (resolv.conf has no port), and the resolv.conf and hosts files are the test's own.
/// </summary>
[Trait("Tier", "Real")]
public sealed class DnsFollowsHostTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-dns-").FullName;

    public DnsFollowsHostTests() => NetRun.RequirePrerequisites();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public async Task AChangedResolvConfIsFollowedWithoutARestart()
    {
        using var first = new TinyDnsServer(new IPEndPoint(IPAddress.Parse("127.0.0.2"), 53), IPAddress.Parse("10.0.0.2"));
        using var second = new TinyDnsServer(new IPEndPoint(IPAddress.Parse("127.0.0.3"), 53), IPAddress.Parse("10.0.0.3"));
        string resolv = Path.Combine(_dir, "resolv.conf");
        await File.WriteAllTextAsync(resolv, "# the host before the VPN\nnameserver 127.0.0.2\n", TestContext.Current.CancellationToken);
        // The namespace sees the test's files: the "VPN" connects from inside the command, between two lookups. The
        // second lookup waits out the gateway's one-second look at the file; the cached first answer must not survive.
        string script = $"busybox nslookup {TinyDnsServer.Name}; echo ===; "
            + $"printf 'nameserver 127.0.0.3\\n' >{resolv}.new && mv {resolv}.new {resolv}; sleep 1.5; "
            + $"busybox nslookup {TinyDnsServer.Name}";
        ProcessResult r = await NetRun.RunAsync(["--resolv-conf", resolv], script, Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(r.ExitCode == 0 && parts.Length == 2, NetRun.Describe(r));
        Assert.Contains("10.0.0.2", parts[0]);
        Assert.Contains("10.0.0.3", parts[1]);
        Assert.DoesNotContain("10.0.0.2", parts[1]);
        Assert.Contains($"{TinyDnsServer.Name}/1", first.Queries);
        Assert.Contains($"{TinyDnsServer.Name}/1", second.Queries);
    }

    [Fact]
    public async Task HostsFileAndRecordsAnswerAndAHostLoopbackNameReachesTheHost()
    {
        using var http = new TinyHttpServer();
        using var upstream = new TinyDnsServer();
        string hosts = Path.Combine(_dir, "hosts");
        await File.WriteAllTextAsync(hosts, """
            127.0.0.1	localhost
            127.0.0.1	myapp.test   # a developer's local service on the host
            10.1.2.3	Other.Test alias.test
            fd00::5	six.test
            not-an-address	broken.test
            """, TestContext.Current.CancellationToken);
        string script = string.Join("; echo ===; ", [
            "busybox nslookup myapp.test",
            "busybox nslookup alias.test",
            "busybox nslookup a.b.zone.test",
            "busybox nslookup -type=AAAA six.test",
            "busybox nslookup exact.test",
            $"busybox wget -q -O - http://myapp.test:{http.Port}{TinyHttpServer.Path} | md5sum",
        ]);
        ProcessResult r = await NetRun.RunAsync(
            ["--dns-upstream", upstream.EndPoint.ToString(), "--hosts-file", hosts, "--dns-record", "*.zone.test=10.9.8.7", "--dns-record", "exact.test=10.9.8.6"],
            script, Timeout);
        string[] parts = r.StandardOutput.Split("===");
        Assert.True(r.ExitCode == 0 && parts.Length == 6, NetRun.Describe(r));
        Assert.Contains("192.168.65.2", parts[0]); // the host's loopback, as the guest reaches it
        Assert.Contains("10.1.2.3", parts[1]);
        Assert.Contains("10.9.8.7", parts[2]);
        Assert.Contains("fd00::5", parts[3]);
        Assert.Contains("10.9.8.6", parts[4]);
        Assert.Contains(http.Md5, parts[5]);
        // Answered at the gateway: none of these names went upstream.
        Assert.DoesNotContain(upstream.Queries, q => q.Contains(".test/", StringComparison.Ordinal));
    }

    [Fact]
    public async Task DhcpGivesTheSearchListAndTheNamespaceResolvConfHasIt()
    {
        string script = Path.Combine(_dir, "udhcpc.sh");
        await File.WriteAllTextAsync(script, "#!/bin/sh\n[ \"$1\" = bound ] && echo \"LEASE domain=$domain search=$search\"\nexit 0\n", TestContext.Current.CancellationToken);
        File.SetUnixFileMode(script, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        ProcessResult r = await NetRun.RunAsync(["--dns-search", "corp.test,lab.corp.test"],
            $"cat /etc/resolv.conf; ip addr flush dev eth0 && busybox udhcpc -i eth0 -n -q -f -t 5 -T 2 -O search -s {script}", Timeout);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains("search corp.test lab.corp.test", r.StandardOutput);
        Assert.Contains("LEASE domain=corp.test search=corp.test lab.corp.test", r.StandardOutput);
    }

    [Fact]
    public async Task BadDnsFlagsAreRefusedWithOneLine()
    {
        ProcessResult r = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["net", "run", "--dns-record", "nohost", "--", "true"], Timeout, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(125, r.ExitCode);
        Assert.Contains("--dns-record", r.StandardError);
        r = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["net", "run", "--dns-search", "bad domain!", "--", "true"], Timeout, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(125, r.ExitCode);
        Assert.Contains("--dns-search", r.StandardError);
    }
}
