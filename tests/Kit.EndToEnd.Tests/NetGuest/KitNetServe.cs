using System.Globalization;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.NetGuest;

/// <summary>
/// `kit net serve ...` as a separate process with the test's DNS upstream. <see cref="StopAsync"/> ends it with
/// SIGTERM (as a service manager would), so it flushes the pcap and its exit code can be checked.
/// </summary>
internal sealed class KitNetServe : IDisposable
{
    private readonly RunningProcess _process;

    private KitNetServe(RunningProcess process) => _process = process;

    public static async Task<KitNetServe> StartAsync(IEnumerable<string> links, TinyDnsServer dns, string? pcap, CancellationToken cancel)
    {
        List<string> args = ["net", "serve", .. links, "--dns-upstream", dns.EndPoint.ToString()];
        if (pcap is not null)
        {
            args.AddRange(["--pcap", pcap]);
        }
        RunningProcess p = KitCli.Start([.. args]);
        try
        {
            await p.WaitForLineAsync(l => l.Contains("vpnkit serving", StringComparison.Ordinal), TimeSpan.FromSeconds(30), cancel);
        }
        catch
        {
            p.Dispose();
            throw;
        }
        return new KitNetServe(p);
    }

    public string Output => _process.StandardOutput + _process.StandardError;

    public bool HasExited => _process.Process.HasExited;

    /// <summary>SIGTERM, then waits (killing it after 15 s); returns its exit.</summary>
    public async Task<ProcessResult> StopAsync()
    {
        if (!_process.Process.HasExited)
        {
            await ProcessRunner.RunAsync("kill", ["-TERM", _process.Id.ToString(CultureInfo.InvariantCulture)], timeout: TimeSpan.FromSeconds(10));
        }
        return await _process.WaitAsync(TimeSpan.FromSeconds(15));
    }

    public void Dispose() => _process.Dispose();
}

/// <summary>
/// The one script a guest runs per boot: DHCP, then DNS through the gateway, an HTTP fetch from the host, ping.
/// Each step prints a "== name ==" header so the host can pick its output apart.
/// </summary>
internal static class GuestNetScript
{
    public static string Full(int httpPort, int dnsPort, int closedPort) => $"""
        ip link set eth0 up
        echo "== dhcp =="
        udhcpc -i eth0 -n -q -t 5 -T 3 2>&1; echo "rc=$?"
        echo "== addr =="
        ip -4 -o addr show dev eth0
        ip -o link show dev eth0
        echo "== route =="
        ip route
        echo "== resolv =="
        cat /etc/resolv.conf
        echo "== dns-a =="
        nslookup {TinyDnsServer.Name} 2>&1; echo "rc=$?"
        echo "== dns-nx =="
        nslookup missing.{TinyDnsServer.Name} 2>&1; echo "rc=$?"
        echo "== dns-host =="
        nslookup host.docker.internal 2>&1; echo "rc=$?"
        echo "== http =="
        {Fetch(httpPort)}
        echo "== udp-nat =="
        nslookup -port={dnsPort} {TinyDnsServer.Name} 192.168.65.2 2>&1; echo "rc=$?"
        echo "== refused =="
        timeout 30 wget -q -O /tmp/none http://192.168.65.2:{closedPort}/ 2>&1; echo "rc=$?"
        echo "== ping =="
        ping -c 2 -W 5 192.168.65.1 2>&1; echo "rc=$?"
        echo "== ipv6 =="
        for i in $(seq 1 50); do ip -6 addr show dev eth0 | grep -q 'inet6 fd00:6b69:7400:' && ! ip -6 addr show dev eth0 | grep -q tentative && break; sleep 0.2; done
        ip -6 addr show dev eth0; ip -6 route
        ping -c 2 -W 5 fd00:6b69:7400::1 2>&1; echo "rc=$?"
        echo "== end =="
        """;

    /// <summary>
    /// wget the host's page via 192.168.65.2, then print its MD5 and size. Bounded by `timeout`, not `wget -T`:
    /// Debian's busybox-static 1.35 wget segfaults when given -T.
    /// </summary>
    public static string Fetch(int httpPort) =>
        $"timeout 60 wget -q -O /tmp/page http://192.168.65.2:{httpPort}{TinyHttpServer.Path} 2>&1; echo \"rc=$?\"; md5sum /tmp/page; wc -c < /tmp/page";

    /// <summary>The lines printed after "== name ==" up to the next header.</summary>
    public static string Section(string output, string name)
    {
        string header = $"== {name} ==";
        int start = output.IndexOf(header, StringComparison.Ordinal);
        if (start < 0)
        {
            return "";
        }
        start += header.Length;
        int end = output.IndexOf("\n== ", start, StringComparison.Ordinal);
        return (end < 0 ? output[start..] : output[start..end]).Trim();
    }
}
