using Kit.Testing;

namespace Kit.EndToEnd.Tests.NetGuest;

/// <summary>
/// Two QEMU guests at once on one `kit net serve` (two -netdev stream connections to the same socket): each gets
/// its own lease and both fetch the host's page. (Guest-to-guest ping is not asserted: when other tests hold
/// QEMU slots the second guest only boots after the first has powered off.)
/// </summary>
[Trait("Tier", "Real")]
public sealed class TwoGuestsTests(ITestOutputHelper output) : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-netguest2-");
    private readonly TinyDnsServer _dns = new();
    private readonly TinyHttpServer _http = new(64 * 1024);

    [Fact]
    public async Task Two_guests_on_one_server_get_different_leases_and_both_fetch()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string sock = Path.Combine(_dir.FullName, "qemu.sock");
        using KitNetServe kit = await KitNetServe.StartAsync(["--qemu", "unix:" + sock], _dns, pcap: null, cancel);

        string script = $"""
            ip link set eth0 up
            echo "== dhcp =="
            udhcpc -i eth0 -n -q -t 5 -T 3 2>&1; echo "rc=$?"
            echo "== addr =="
            me=$(ip -4 -o addr show dev eth0 | sed -n 's/.*inet \([0-9.]*\)\/.*/\1/p')
            echo "$me"
            echo "== http =="
            {GuestNetScript.Fetch(_http.Port)}
            """;
        QemuGuestOptions Options(string mac) =>
            new QemuGuestOptions { Timeout = TimeSpan.FromSeconds(300) }.AddNetwork(QemuNetwork.Stream(sock, mac));

        await using QemuGuest a = await QemuGuest.StartAsync(script, Options("52:54:00:6b:01:01"), cancel);
        await using QemuGuest b = await QemuGuest.StartAsync(script, Options("52:54:00:6b:01:02"), cancel);
        GuestResult[] results = await Task.WhenAll(a.WaitForExitAsync(cancel), b.WaitForExitAsync(cancel));

        var addresses = new List<string>();
        foreach (GuestResult r in results)
        {
            output.WriteLine($"boot {r.BootTime.TotalSeconds:F1} s, whole run {r.Elapsed.TotalSeconds:F1} s\n{r.Output}");
            string why = $"\n--- guest output ---\n{r.Output}\n--- kit net serve ---\n{Text.Tail(kit.Output, 3000)}";
            Assert.True(GuestNetScript.Section(r.Output, "dhcp").EndsWith("rc=0", StringComparison.Ordinal), "udhcpc failed" + why);
            string address = GuestNetScript.Section(r.Output, "addr");
            Assert.Matches(@"^192\.168\.65\.\d+$", address);
            addresses.Add(address);
            string http = GuestNetScript.Section(r.Output, "http");
            Assert.True(http.StartsWith("rc=0", StringComparison.Ordinal), "wget failed" + why);
            Assert.Contains(_http.Md5 + "  /tmp/page", http, StringComparison.Ordinal);
        }
        Assert.NotEqual(addresses[0], addresses[1]);
        Assert.Equal(["192.168.65.3", "192.168.65.4"], addresses.Order(StringComparer.Ordinal));
        Assert.Equal(2, _http.Requests.Count);
    }

    public void Dispose()
    {
        _dns.Dispose();
        _http.Dispose();
        _dir.Delete(recursive: true);
    }
}
