using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Vm;

/// <summary>
/// `--accel tcg` directly on this machine (no /dev/kvm needed): the default guest on QEMU's software CPU, started and
/// supervised by kit, with Kit's own virtio-net (VPNKit) and virtio-vsock served over vhost-user. Real clients on both
/// sides: the guest kernel's drivers, busybox, iperf3 and socat in the guest; iperf3, a DNS and an HTTP server, and
/// Unix sockets on the host.
/// </summary>
[Trait("Tier", "Real")]
public sealed partial class TcgTests(ITestOutputHelper output) : IDisposable
{
    private readonly DirectoryInfo _work = Directory.CreateTempSubdirectory("kit-tcg-");

    public void Dispose() => _work.Delete(recursive: true);

    private const string GuestScript = """
        export PATH=/kit/bin:$PATH
        udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1 || { echo "no-lease"; exit 20; }
        echo "lease=$(ip -4 -o addr show eth0 | awk '{print $4}')"
        echo "resolved=$(nslookup kit-test.example 2>/dev/null | awk '/^Address/ {a=$NF} END {print a}')"
        p=$(sed -n 's/.*kit\.http=\([0-9]*\).*/\1/p' /proc/cmdline)
        i=$(sed -n 's/.*kit\.iperf=\([0-9]*\).*/\1/p' /proc/cmdline)
        timeout 60 wget -q -O /tmp/page "http://192.168.65.2:$p/kit-page" && echo "page-md5=$(md5sum < /tmp/page | cut -d' ' -f1)"
        echo "iperf-up=$(timeout 60 iperf3 -c 192.168.65.2 -p $i -t 3 -f m | awk '/receiver/ {print $(NF-2)}')"
        echo "iperf-down=$(timeout 60 iperf3 -c 192.168.65.2 -p $i -t 3 -f m -R | awk '/receiver/ {print $(NF-2)}')"
        mkdir -p /mnt/out && mount -t 9p -o trans=virtio,version=9p2000.L out /mnt/out && echo "written by the guest" > /mnt/out/from-guest && umount /mnt/out && echo "share-written"
        socat -t 60 VSOCK-LISTEN:1234 EXEC:"tee /tmp/h-recv" &
        listener=$!
        echo VSOCK-LISTENING
        wait $listener
        echo "guest-got-from-host=$(sha256sum < /tmp/h-recv | cut -d' ' -f1)"
        head -c 1048576 /dev/urandom > /tmp/g.bin
        socat -t 60 - VSOCK-CONNECT:2:5000 < /tmp/g.bin > /tmp/g.echo
        echo "guest-sent=$(sha256sum < /tmp/g.bin | cut -d' ' -f1)"
        echo "guest-echo=$(sha256sum < /tmp/g.echo | cut -d' ' -f1)"
        exit 0
        """;

    [Fact]
    public async Task Vm_run_tcg_gives_the_guest_vpnkit_vsock_and_a_share()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string initrd = Path.Combine(_work.FullName, "tcg.initrd");
        await image.WriteInitrdAsync(initrd, GuestScript, VmVsockTests.SocatFiles(), cancel);
        string share = Directory.CreateDirectory(Path.Combine(_work.FullName, "share")).FullName;
        string vsock = Path.Combine(_work.FullName, "v.sock");
        using var dns = new TinyDnsServer();
        using var http = new TinyHttpServer();
        int iperfPort = LoopbackPort.Free();
        using RunningProcess iperf = ProcessRunner.Start("iperf3", ["-s", "-B", "127.0.0.1", "-p", iperfPort.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        byte[] fromHost = RandomNumberGenerator.GetBytes(1 << 20);
        using var guestToHost = new EchoListener($"{vsock}_5000");

        using RunningProcess kit = KitCli.Start("vm", "run", "--accel", "tcg", "--kernel", image.Kernel, "--initrd", initrd, "--cpus", "2",
            "--cmdline", $"console=ttyS0 reboot=k panic=-1 no_timer_check kit.http={http.Port} kit.iperf={iperfPort}",
            "--net", "vpnkit", "--dns-upstream", dns.EndPoint.ToString(), "--vsock", vsock, "--share", $"out={share}");
        await kit.WaitForLineAsync(l => l.Contains("VSOCK-LISTENING", StringComparison.Ordinal), TimeSpan.FromMinutes(4), cancel);
        (string okLine, byte[] echoed) = await HostToGuestAsync(vsock, 1234, fromHost, kit, cancel);
        ProcessResult result = await kit.WaitAsync(TimeSpan.FromMinutes(3), cancel);

        output.WriteLine(Text.Tail(result.StandardOutput + "\n--- stderr ---\n" + result.StandardError, 8000));
        string all = result.StandardOutput;
        Assert.True(result.ExitCode == 0, $"kit exited {result.ExitCode}\n{Text.Tail(result.Output, 4000)}");
        Assert.Contains("KIT-GUEST-EXIT 0", all, StringComparison.Ordinal);
        Assert.Matches(@"^192\.168\.65\.\d+/24$", Value(all, "lease"));
        Assert.Equal(TinyDnsServer.Address.ToString(), Value(all, "resolved"));
        Assert.Contains($"{TinyDnsServer.Name}/1", dns.Queries);
        Assert.Equal(http.Md5, Value(all, "page-md5"));
        Assert.True(double.Parse(Value(all, "iperf-up"), System.Globalization.CultureInfo.InvariantCulture) > 0, "iperf3 guest->host moved nothing");
        Assert.True(double.Parse(Value(all, "iperf-down"), System.Globalization.CultureInfo.InvariantCulture) > 0, "iperf3 host->guest moved nothing");
        Assert.Contains("share-written", all, StringComparison.Ordinal);
        Assert.Equal("written by the guest\n", File.ReadAllText(Path.Combine(share, "from-guest")));
        Assert.Matches(@"^OK \d+$", okLine);
        string hostSent = Convert.ToHexStringLower(SHA256.HashData(fromHost));
        Assert.Equal(hostSent, Value(all, "guest-got-from-host"));
        Assert.Equal(hostSent, Convert.ToHexStringLower(SHA256.HashData(echoed)));
        string guestSent = Value(all, "guest-sent");
        Assert.Equal(guestSent, guestToHost.ReceivedSha256);
        Assert.Equal(guestSent, Value(all, "guest-echo"));
    }

    [Fact]
    public async Task Sigkill_of_kit_takes_qemu_with_it_and_leaves_no_socket()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string initrd = Path.Combine(_work.FullName, "sleep.initrd");
        await image.WriteInitrdAsync(initrd, "echo GUEST-SLEEPING; sleep 600", null, cancel);
        string tmp = Directory.CreateDirectory(Path.Combine(_work.FullName, "tmp")).FullName;
        string vsock = Path.Combine(_work.FullName, "v.sock");
        string[] args = ["vm", "run", "--accel", "tcg", "--kernel", image.Kernel, "--initrd", initrd, "--net", "vpnkit",
            "--dns-upstream", "127.0.0.1:9", "--vsock", vsock];
        // No .NET diagnostics pipes in TMPDIR (the JIT-ted kit of a plain build would make them): only kit's own files.
        var env = new Dictionary<string, string?> { ["TMPDIR"] = tmp, ["DOTNET_EnableDiagnostics"] = "0" };

        using (RunningProcess kit = ProcessRunner.Start(KitCli.ExecutablePath, args, env))
        {
            await kit.WaitForLineAsync(l => l.Contains("GUEST-SLEEPING", StringComparison.Ordinal), TimeSpan.FromMinutes(4), cancel);
            int[] children = Children(kit.Id);
            Assert.NotEmpty(children);
            Assert.Contains(children, pid => File.ReadAllText($"/proc/{pid}/cmdline").Contains("qemu-system-x86_64", StringComparison.Ordinal));
            Assert.Empty(Directory.GetFiles(tmp, "*.sock", SearchOption.AllDirectories));

            ProcessRunner.Run("kill", ["-KILL", kit.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]).EnsureSuccess();

            var clock = Stopwatch.StartNew();
            while (children.Any(pid => Directory.Exists($"/proc/{pid}")) && clock.Elapsed < TimeSpan.FromSeconds(20))
            {
                await Task.Delay(100, cancel);
            }
            Assert.DoesNotContain(children, pid => Directory.Exists($"/proc/{pid}") && !File.ReadAllText($"/proc/{pid}/stat").Contains(") Z ", StringComparison.Ordinal));
        }
        // QEMU's vhost-user sockets were unlinked as soon as it connected; nothing in kit's runtime directory.
        Assert.Empty(Directory.GetFiles(tmp, "*", SearchOption.AllDirectories));
        // The --vsock socket kit could not remove is stale now, and the next start replaces it.
        await image.WriteInitrdAsync(initrd, "echo again", null, cancel);
        ProcessResult again = await ProcessRunner.RunAsync(KitCli.ExecutablePath, args, TimeSpan.FromMinutes(4), environment: env, cancellationToken: cancel);
        Assert.True(again.ExitCode == 0, again.Output);
        Assert.Contains("KIT-GUEST-EXIT 0", again.StandardOutput, StringComparison.Ordinal);
        Assert.False(File.Exists(vsock));
    }

    /// <summary>The same exit codes as under kvm: 4 for a kernel panic (console banner), 2 for a reset (QMP's reason).</summary>
    [Theory]
    [InlineData("echo c > /proc/sysrq-trigger", 4, "the guest kernel panicked")]
    [InlineData("reboot -f", 2, "the guest reset the machine")]
    public async Task Panic_and_reset_end_kit_with_kvms_exit_codes(string script, int code, string message)
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string initrd = Path.Combine(_work.FullName, "end.initrd");
        await image.WriteInitrdAsync(initrd, script, null, cancel);

        ProcessResult result = await ProcessRunner.RunAsync(KitCli.ExecutablePath,
            ["vm", "run", "--accel", "tcg", "--kernel", image.Kernel, "--initrd", initrd], TimeSpan.FromMinutes(3), cancellationToken: cancel);

        Assert.True(result.ExitCode == code, result.Output);
        Assert.Contains($"kit: vm: {message} (exit code {code}", result.StandardError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Missing_qemu_is_one_line_naming_the_debian_package()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string emptyBin = Directory.CreateDirectory(Path.Combine(_work.FullName, "bin")).FullName;

        ProcessResult result = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["vm", "run", "--accel", "tcg", "--kernel", image.Kernel],
            TimeSpan.FromMinutes(1), environment: new Dictionary<string, string?> { ["PATH"] = emptyBin }, cancellationToken: cancel);

        Assert.Equal(1, result.ExitCode);
        Assert.Equal("kit: --accel tcg needs QEMU: qemu-system-x86_64 is not on PATH (Debian: apt-get install qemu-system-x86)", result.StandardError.Trim());
    }

    /// <summary>`kit up` as a new user runs it here: auto picks what the host has, and the demo commits into DataKit.</summary>
    [Fact]
    public async Task Kit_up_with_accel_auto_runs_the_demo_and_host_git_sees_the_commit()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        await GuestImage.GetDefaultAsync(cancel);
        string repo = Path.Combine(_work.FullName, "store");

        ProcessResult up = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["demo", "--git", repo, "--dns-upstream", "127.0.0.1:9", "--listen-9p", $"unix:{Path.Combine(_work.FullName, "9p.sock")}"],
            TimeSpan.FromMinutes(5), cancellationToken: cancel);

        output.WriteLine(Text.Tail(up.Output, 6000));
        Assert.True(up.ExitCode == 0, up.Output);
        Assert.Matches(@"kit demo: eth0 192\.168\.65\.\d+/24 via 192\.168\.65\.1", up.StandardOutput);
        Assert.Contains("kit demo: host.docker.internal is 192.168.65.2", up.StandardOutput, StringComparison.Ordinal);
        Assert.Contains("kit demo: DataKit is mounted at /datakit", up.StandardOutput, StringComparison.Ordinal);
        string log = ProcessRunner.Run("git", ["-C", repo, "log", "--format=%s", "master"]).EnsureSuccess().StandardOutput;
        Assert.Contains("kit demo: the guest booted and recorded its network", log, StringComparison.Ordinal);
        Assert.Equal("2", ProcessRunner.Run("git", ["-C", repo, "show", "master:vm/cpus"]).EnsureSuccess().StandardOutput.Trim());
        ProcessRunner.Run("git", ["-C", repo, "fsck", "--strict"]).EnsureSuccess();
    }

    private static string Value(string text, string key)
    {
        Match m = Regex.Match(text, $@"(?m)^{Regex.Escape(key)}=(\S*)\r?$");
        Assert.True(m.Success, $"no {key}= line in\n{Text.Tail(text, 4000)}");
        return m.Groups[1].Value;
    }

    private static int[] Children(int pid)
    {
        var children = new List<int>();
        foreach (string task in Directory.GetDirectories($"/proc/{pid}/task"))
        {
            string list = File.ReadAllText(Path.Combine(task, "children"));
            children.AddRange(list.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse));
        }
        // setpriv execs QEMU in place, so kit's child is QEMU itself.
        return [.. children];
    }

    /// <summary>
    /// Firecracker's host-initiated vsock connection: CONNECT, OK, then bytes both ways until EOF. The guest prints
    /// its marker as it starts socat in the background, so the first tries may find nobody listening yet (refused).
    /// </summary>
    private static async Task<(string OkLine, byte[] Echoed)> HostToGuestAsync(string path, int port, byte[] data, RunningProcess kit, CancellationToken cancel)
    {
        for (int attempt = 1; ; attempt++)
        {
            try
            {
                (string ok, byte[] echoed) = await TransferAsync(path, port, data, cancel);
                if (ok.StartsWith("OK ", StringComparison.Ordinal))
                {
                    return (ok, echoed);
                }
            }
            catch (SocketException)
            {
                // Refused: the host side closed the connection while we were still sending.
            }
            Assert.True(attempt < 30 && !kit.Process.HasExited, $"no vsock listener in the guest after {attempt} tries\n{Text.Tail(kit.StandardOutput, 3000)}");
            await Task.Delay(1000, cancel);
        }
    }

    private static async Task<(string OkLine, byte[] Echoed)> TransferAsync(string path, int port, byte[] data, CancellationToken cancel)
    {
        using var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await s.ConnectAsync(new UnixDomainSocketEndPoint(path), cancel);
        await s.SendAsync(Encoding.ASCII.GetBytes($"CONNECT {port}\n"), cancel);
        var received = new MemoryStream();
        Task reader = Task.Run(async () =>
        {
            byte[] buffer = new byte[64 * 1024];
            int n;
            while ((n = await s.ReceiveAsync(buffer, cancel)) > 0)
            {
                received.Write(buffer, 0, n);
            }
        }, cancel);
        await s.SendAsync(data, cancel);
        s.Shutdown(SocketShutdown.Send);
        await reader.WaitAsync(TimeSpan.FromMinutes(2), cancel);
        byte[] all = received.ToArray();
        int newline = Array.IndexOf(all, (byte)'\n');
        if (newline < 0)
        {
            return ("", []);
        }
        return (Encoding.ASCII.GetString(all, 0, newline), all[(newline + 1)..]);
    }

    /// <summary>The host end of a guest-initiated vsock connection (PATH_PORT): keeps and echoes what arrives.</summary>
    private sealed class EchoListener : IDisposable
    {
        private readonly Socket _listener = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        private readonly Task _serve;
        private string? _sha;

        public EchoListener(string path)
        {
            _listener.Bind(new UnixDomainSocketEndPoint(path));
            _listener.Listen(1);
            _serve = Task.Run(async () =>
            {
                using Socket c = await _listener.AcceptAsync();
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
                byte[] buffer = new byte[64 * 1024];
                int n;
                while ((n = await c.ReceiveAsync(buffer)) > 0)
                {
                    hash.AppendData(buffer, 0, n);
                    await c.SendAsync(buffer.AsMemory(0, n));
                }
                c.Shutdown(SocketShutdown.Send);
                _sha = Convert.ToHexStringLower(hash.GetHashAndReset());
            });
        }

        public string? ReceivedSha256
        {
            get
            {
                _serve.Wait(TimeSpan.FromSeconds(30));
                return _sha;
            }
        }

        public void Dispose() => _listener.Dispose();
    }
}
