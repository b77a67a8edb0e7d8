using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Vm;

/// <summary>
/// Issue 6's proof of virtio-net with real clients: inside the nested runner's L1, the Debian guest under
/// `kit vm run --net vpnkit` gets a DHCP lease from the in-process VPNKit, resolves a name its loopback upstream serves
/// (and the built-in host.docker.internal), fetches a page from L1's 127.0.0.1 through 192.168.65.2 and runs iperf3
/// both ways against L1's loopback. Then the same guest under `--net vmnet:PATH` against `kit net serve --vmnet` in
/// another process gets a lease and fetches the page. Last, under `--net tap:kit-tap0` (a TAP device L1 creates and
/// configures as 10.77.0.1/24, which kit attaches to), the guest takes 10.77.0.2/24 itself, pings L1 and fetches the
/// page from an HTTP server L1 runs on 10.77.0.1. L1 runs its own servers (HTTP, DNS, iperf3): its resolv.conf points
/// off the machine and is never used.
/// </summary>
[Trait("Tier", "Real")]
public sealed class VmNetTests(ITestOutputHelper output)
{
    private const string Name = "vmnet-test.kit.example", NameAddress = "10.9.8.7";

    // A minimal DNS upstream for L1's loopback: answers A queries for one name, NXDOMAIN for the rest (RFC 1035 4.1).
    private const string DnsServer = """
        import socket, struct, sys
        port, name, addr = int(sys.argv[1]), sys.argv[2].lower(), bytes(int(x) for x in sys.argv[3].split('.'))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', port))
        while True:
            q, peer = s.recvfrom(2048)
            if len(q) < 12: continue
            i, labels = 12, []
            while i < len(q) and q[i] != 0:
                labels.append(q[i+1:i+1+q[i]].decode('ascii', 'replace')); i += q[i] + 1
            qend = i + 5
            qtype = struct.unpack('>H', q[i+1:i+3])[0] if qend <= len(q) else 0
            known = '.'.join(labels).lower() == name
            hit = known and qtype == 1
            head = q[:2] + struct.pack('>HHHHH', 0x8180 if known else 0x8183, 1, 1 if hit else 0, 0, 0)
            ans = b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 60, 4) + addr if hit else b''
            s.sendto(head + q[12:qend] + ans, peer)
        """;

    private const string VpnKitGuest = """
        ip link set eth0 up || exit 10
        udhcpc -i eth0 -n -q -t 10 -T 3 || exit 11
        echo "lease=$(ip -4 -o addr show dev eth0 | grep -o 'inet [0-9.]*')"
        echo "mtu=$(cat /sys/class/net/eth0/mtu)"
        cat /sys/class/net/eth0/device/features 2>/dev/null | sed 's/^/features=/'
        nslookup vmnet-test.kit.example 2>&1 | sed 's/^/dns1: /'
        nslookup host.docker.internal 2>&1 | sed 's/^/dns2: /'
        wget -q -O /tmp/page http://192.168.65.2:HTTPPORT/page.bin || exit 12
        echo "md5=$(md5sum /tmp/page | cut -d' ' -f1)"
        timeout 120 iperf3 -c 192.168.65.2 -p IPERFPORT -n 4M -f m > /tmp/up 2>&1; echo "iperf-up-rc=$?"
        grep -E 'sender|receiver|error' /tmp/up | sed 's/^/iperf-up: /'
        timeout 120 iperf3 -c 192.168.65.2 -p IPERFPORT -n 4M -f m -R > /tmp/down 2>&1; echo "iperf-down-rc=$?"
        grep -E 'sender|receiver|error' /tmp/down | sed 's/^/iperf-down: /'
        exit 0
        """;

    private const string VmnetGuest = """
        ip link set eth0 up || exit 10
        udhcpc -i eth0 -n -q -t 10 -T 3 || exit 11
        echo "lease=$(ip -4 -o addr show dev eth0 | grep -o 'inet [0-9.]*')"
        wget -q -O /tmp/page http://192.168.65.2:HTTPPORT/page.bin || exit 12
        echo "md5=$(md5sum /tmp/page | cut -d' ' -f1)"
        exit 0
        """;

    // The host side of the TAP is L1's; the guest has no DHCP server there, so it sets its address itself.
    private const string TapGuest = """
        ip addr add 10.77.0.2/24 dev eth0 || exit 10
        ip link set eth0 up || exit 10
        echo "mtu=$(cat /sys/class/net/eth0/mtu)"
        ping -c 3 -W 10 10.77.0.1 >/tmp/ping 2>&1; echo "ping-rc=$?"
        sed 's/^/ping: /' /tmp/ping
        wget -q -O /tmp/page http://10.77.0.1:TAPHTTPPORT/page.bin || exit 12
        echo "md5=$(md5sum /tmp/page | cut -d' ' -f1)"
        exit 0
        """;

    [Fact]
    public async Task Guest_gets_a_lease_resolves_fetches_and_runs_iperf3_over_vpnkit_over_vmn3t_and_over_a_tap()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string work = Path.Combine(RepoPaths.Root, "artifacts", "test-work", $"vm-net-{Environment.ProcessId}");
        Directory.CreateDirectory(Path.Combine(work, "www"));
        try
        {
            byte[] page = RandomNumberGenerator.GetBytes(300_000);
            await File.WriteAllBytesAsync(Path.Combine(work, "www", "page.bin"), page, cancel);
            string md5 = Convert.ToHexStringLower(MD5.HashData(page));
            await File.WriteAllTextAsync(Path.Combine(work, "dns.py"), DnsServer, cancel);
            const int httpPort = 18080, dnsPort = 15353, iperfPort = 15201, tapHttpPort = 18081;
            string Fill(string s) => s.Replace("TAPHTTPPORT", $"{tapHttpPort}", StringComparison.Ordinal)
                .Replace("HTTPPORT", $"{httpPort}", StringComparison.Ordinal).Replace("IPERFPORT", $"{iperfPort}", StringComparison.Ordinal);
            string vpnkitInitrd = Path.Combine(work, "vpnkit.initrd");
            string vmnetInitrd = Path.Combine(work, "vmnet.initrd");
            await image.WriteInitrdAsync(vpnkitInitrd, Fill(VpnKitGuest), cancellationToken: cancel);
            await image.WriteInitrdAsync(vmnetInitrd, Fill(VmnetGuest), cancellationToken: cancel);
            string tapInitrd = Path.Combine(work, "tap.initrd");
            await image.WriteInitrdAsync(tapInitrd, Fill(TapGuest), cancellationToken: cancel);

            string kit = KitCli.ExecutablePath;
            string Vm(string initrd, string console, params string[] net) => Text.ShellJoin(
                [kit, "vm", "run", "--kernel", image.Kernel, "--initrd", initrd, "--memory", "512M",
                 "--cmdline", "console=ttyS0 reboot=k panic=-1 no_timer_check", .. net]) + $" >{console} 2>&1";
            // The VMN3T socket lives in L1's own /tmp: the results share is 9p, where Unix sockets do not work.
            string command = $"""
                cd {work}
                python3 dns.py {dnsPort} {Name} {NameAddress} &
                python3 -m http.server {httpPort} --bind 127.0.0.1 --directory {work}/www >/dev/null 2>&1 &
                iperf3 -s -B 127.0.0.1 -p {iperfPort} >/dev/null 2>&1 &
                sleep 1
                {Vm(vpnkitInitrd, work + "/vpnkit.console", "--net", "vpnkit", "--dns-upstream", $"127.0.0.1:{dnsPort}")}
                echo "vpnkit-exit=$?"
                {Text.ShellJoin([kit, "net", "serve", "--vmnet", "unix:/tmp/vmnet.sock", "--dns-upstream", $"127.0.0.1:{dnsPort}"])} >{work}/serve.log 2>&1 &
                serve=$!
                for i in $(seq 100); do [ -S /tmp/vmnet.sock ] && break; sleep 0.2; done
                {Vm(vmnetInitrd, work + "/vmnet.console", "--net", "vmnet:/tmp/vmnet.sock")}
                echo "vmnet-exit=$?"
                kill $serve
                ip tuntap add dev kit-tap0 mode tap && ip addr add 10.77.0.1/24 dev kit-tap0 && ip link set kit-tap0 up || echo "tap-setup-failed"
                python3 -m http.server {tapHttpPort} --bind 10.77.0.1 --directory {work}/www >/dev/null 2>&1 &
                sleep 1
                {Vm(tapInitrd, work + "/tap.console", "--net", "tap:kit-tap0")}
                echo "tap-exit=$?"
                echo "tap-host-rx-packets=$(cat /sys/class/net/kit-tap0/statistics/rx_packets)"
                """;
            var options = new NestedOptions { ResultsDirectory = work, Timeout = TimeSpan.FromMinutes(20) };

            GuestResult l1 = await NestedRunner.RunAsync(command, options, cancel);

            string vpn = ReadIfExists(Path.Combine(work, "vpnkit.console"));
            string vmn = ReadIfExists(Path.Combine(work, "vmnet.console"));
            string tap = ReadIfExists(Path.Combine(work, "tap.console"));
            output.WriteLine($"L1 boot {l1.BootTime.TotalSeconds:F1} s, total {l1.Elapsed.TotalSeconds:F1} s\n{l1.Output}");
            output.WriteLine($"--- guest console (vpnkit) ---\n{Text.Tail(vpn, 8000)}\n--- guest console (vmnet) ---\n{Text.Tail(vmn, 4000)}\n--- guest console (tap) ---\n{Text.Tail(tap, 4000)}");
            output.WriteLine($"--- kit net serve ---\n{Text.Tail(ReadIfExists(Path.Combine(work, "serve.log")), 2000)}");

            Assert.True(l1.Output.Contains("vpnkit-exit=0", StringComparison.Ordinal), $"kit vm run --net vpnkit did not exit 0\n{l1.Output}\n{Text.Tail(vpn, 6000)}");
            Assert.Contains("KIT-GUEST-EXIT 0", vpn, StringComparison.Ordinal);
            Assert.Contains("lease=inet 192.168.65.", vpn, StringComparison.Ordinal);
            Assert.Contains($"dns1: Address: {NameAddress}", vpn.Replace("Address 1: ", "Address: ", StringComparison.Ordinal), StringComparison.Ordinal);
            Assert.Contains("dns2: Address: 192.168.65.2", vpn.Replace("Address 1: ", "Address: ", StringComparison.Ordinal), StringComparison.Ordinal);
            Assert.Contains($"md5={md5}", vpn, StringComparison.Ordinal);
            Assert.Contains("iperf-up-rc=0", vpn, StringComparison.Ordinal);
            Assert.Contains("iperf-down-rc=0", vpn, StringComparison.Ordinal);
            Assert.Contains("iperf-up: ", vpn, StringComparison.Ordinal);
            Assert.Contains("iperf-down: ", vpn, StringComparison.Ordinal);

            Assert.True(l1.Output.Contains("vmnet-exit=0", StringComparison.Ordinal), $"kit vm run --net vmnet did not exit 0\n{l1.Output}\n{Text.Tail(vmn, 6000)}");
            Assert.Contains("KIT-GUEST-EXIT 0", vmn, StringComparison.Ordinal);
            Assert.Contains("lease=inet 192.168.65.", vmn, StringComparison.Ordinal);
            Assert.Contains($"md5={md5}", vmn, StringComparison.Ordinal);

            Assert.DoesNotContain("tap-setup-failed", l1.Output, StringComparison.Ordinal);
            Assert.True(l1.Output.Contains("tap-exit=0", StringComparison.Ordinal), $"kit vm run --net tap did not exit 0\n{l1.Output}\n{Text.Tail(tap, 6000)}");
            Assert.Contains("KIT-GUEST-EXIT 0", tap, StringComparison.Ordinal);
            Assert.Contains("ping-rc=0", tap, StringComparison.Ordinal);
            Assert.Contains("ping: 3 packets transmitted", tap, StringComparison.Ordinal);
            Assert.Contains($"md5={md5}", tap, StringComparison.Ordinal);
            // L1's own counter: the guest's frames really entered the host kernel through the TAP.
            Match rx = Regex.Match(l1.Output, @"tap-host-rx-packets=(\d+)");
            Assert.True(rx.Success && long.Parse(rx.Groups[1].Value, CultureInfo.InvariantCulture) > 0, $"no frames reached L1's kit-tap0\n{l1.Output}");
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static string ReadIfExists(string path) => File.Exists(path) ? File.ReadAllText(path) : "(no console file)";
}
