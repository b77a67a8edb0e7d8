using System.Diagnostics;
using System.Net;
using System.Text;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// A QEMU TCG guest (stock Debian kernel, busybox initramfs from guest/build.sh) on `kit net serve`, over
/// `-netdev stream` and `-netdev dgram`: DHCP, DNS through a local upstream and an HTTP fetch from the host.
/// Minimal local helpers until the shared QemuGuest harness is merged.
/// </summary>
[Trait("Tier", "Real")]
public sealed class QemuGuestNetTests
{
    [Theory]
    [InlineData("stream")]
    [InlineData("dgram")]
    public async Task GuestGetsLeaseResolvesAndFetches(string transport)
    {
        KitCli.RequirePrerequisites();
        (string kernel, string initrd) = GuestImage();
        string dir = Directory.CreateTempSubdirectory("kit-qemu-net-").FullName;
        using var dns = new TinyDns(new() { ["test.example"] = IPAddress.Parse("10.9.8.7") });
        using var http = new TinyHttp("page served from the host");
        string sock = Path.Combine(dir, "kit.sock");
        var serveStart = new ProcessStartInfo(KitCli.Path) { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in new[] { "net", "serve", transport == "stream" ? "--qemu" : "--dgram", $"unix:{sock}", "--dns-upstream", $"127.0.0.1:{dns.EndPoint.Port}" })
        {
            serveStart.ArgumentList.Add(a);
        }
        using Process serve = Process.Start(serveStart)!;
        Task<string> serveErr = serve.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
        Process? qemu = null;
        try
        {
            for (int i = 0; i < 200 && !File.Exists(sock); i++)
            {
                await Task.Delay(50, TestContext.Current.CancellationToken);
            }
            Assert.True(File.Exists(sock), "kit net serve did not create its socket");
            string script = string.Join('\n',
                "udhcpc -i eth0 -n -q -t 10 -T 2 || exit 11",
                "ip -4 addr show eth0",
                "cat /etc/resolv.conf",
                "nslookup test.example || exit 12",
                $"wget -q -O - http://192.168.65.2:{http.Port}/ || exit 13",
                "echo; echo NET-OK");
            string netdev = transport == "stream"
                ? $"stream,id=n0,server=off,addr.type=unix,addr.path={sock}"
                : $"dgram,id=n0,local.type=unix,local.path={Path.Combine(dir, "qemu.sock")},remote.type=unix,remote.path={sock}";
            var qemuStart = new ProcessStartInfo("qemu-system-x86_64") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (string a in new[]
            {
                "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
                "-kernel", kernel, "-initrd", initrd,
                "-append", $"console=ttyS0 quiet panic=-1 kit.cmd={Convert.ToBase64String(Encoding.UTF8.GetBytes(script))}",
                "-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
            })
            {
                qemuStart.ArgumentList.Add(a);
            }
            qemu = Process.Start(qemuStart)!;
            Task<string> console = qemu.StandardOutput.ReadToEndAsync(TestContext.Current.CancellationToken);
            Task<string> qemuErr = qemu.StandardError.ReadToEndAsync(TestContext.Current.CancellationToken);
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(180));
            try
            {
                await qemu.WaitForExitAsync(cts.Token);
            }
            catch (OperationCanceledException)
            {
                qemu.Kill(entireProcessTree: true);
            }
            string output = await console;
            string diagnostics = $"guest console:\n{output}\nqemu stderr:\n{await qemuErr}";
            Assert.True(output.Contains("KIT-GUEST-EXIT 0", StringComparison.Ordinal), diagnostics);
            Assert.Contains("inet 192.168.65.3/24", output);
            Assert.Contains("nameserver 192.168.65.1", output);
            Assert.Contains("10.9.8.7", output);
            Assert.Contains("page served from the host", output);
            Assert.Contains("NET-OK", output);
        }
        finally
        {
            if (qemu is { HasExited: false })
            {
                qemu.Kill(entireProcessTree: true);
            }
            qemu?.Dispose();
            if (!serve.HasExited)
            {
                serve.Kill();
            }
            await serve.WaitForExitAsync(TestContext.Current.CancellationToken);
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>The default guest: `kit guest build` output (kernel=/initrd= lines), else the guest cache.</summary>
    private static (string Kernel, string Initrd) GuestImage()
    {
        var start = new ProcessStartInfo(KitCli.Path) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("guest");
        start.ArgumentList.Add("build");
        string? kernel = null;
        string? initrd = null;
        using (Process p = Process.Start(start)!)
        {
            string stdout = p.StandardOutput.ReadToEnd();
            p.StandardError.ReadToEnd();
            p.WaitForExit();
            foreach (string line in stdout.Split('\n'))
            {
                if (line.StartsWith("kernel=", StringComparison.Ordinal))
                {
                    kernel = line[7..].Trim();
                }
                else if (line.StartsWith("initrd=", StringComparison.Ordinal))
                {
                    initrd = line[7..].Trim();
                }
            }
        }
        if (kernel is null || initrd is null || !File.Exists(kernel) || !File.Exists(initrd))
        {
            string cache = Environment.GetEnvironmentVariable("KIT_GUEST_CACHE")
                ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "kit", "guest");
            string? found = Directory.Exists(cache)
                ? Directory.GetDirectories(cache).FirstOrDefault(d => File.Exists(Path.Combine(d, "vmlinuz")) && File.Exists(Path.Combine(d, "initrd.gz")))
                : null;
            Assert.True(found is not null, $"no default guest: run `kit guest build` (cache {cache})");
            kernel = Path.Combine(found!, "vmlinuz");
            initrd = Path.Combine(found!, "initrd.gz");
        }
        return (kernel, initrd);
    }
}
