using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Kit.Cli.Machines;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// The machine image (guest/image.sh via `kit image build`) boots under `kit vm run --accel tcg`: the initramfs switches
/// to the ext4 root on virtio-blk (kit.root=/dev/vda), busybox init runs /etc/kit/rc (DHCP from VPNKit, hostname,
/// DNS through VPNKit's forwarder to a loopback server), respawns the agent (a stand-in here), and the disk made by
/// <see cref="MachineDisk"/> keeps what a boot wrote into the next one, also after it was grown. Each boot ends with a
/// clean poweroff through init (the filesystem checks clean afterwards).
/// </summary>
[Trait("Tier", "Real")]
public sealed partial class MachineImageTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>The first build downloads ~120 MiB and runs mmdebstrap: about 2.5 minutes on 2 busy cores.</summary>
    private static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(12);
    private static readonly TimeSpan BootTimeout = TimeSpan.FromMinutes(4);

    /// <summary>The stand-in for kit-agent: init must start it after rc and keep it running.</summary>
    private const string StandInAgent = "#!/bin/sh\nexec sleep 100000\n";

    private readonly DirectoryInfo _work = Directory.CreateTempSubdirectory("kit-machine-");

    public void Dispose() => _work.Delete(recursive: true);

    /// <summary>Runs in the guest after KIT-MACHINE-READY (kit.cmd), reports, then powers off through init.</summary>
    private const string GuestScript = """
        sleep 1
        echo "CHECK hostname=$(hostname)"
        echo "CHECK count=$(cat /var/lib/kit/boot-count)"
        echo "CHECK agent=$(pgrep -f "sleep 100000" >/dev/null && echo running || echo missing)"
        echo "CHECK modules=$(ls -d /lib/modules/$(uname -r)/kernel >/dev/null 2>&1 && echo present || echo missing)"
        echo "CHECK overlay=$(modprobe overlay && grep -qw overlay /proc/filesystems && echo loaded || echo failed)"
        echo "CHECK resolved=$(python3 -c 'import socket; print(socket.gethostbyname("kit-test.example"))' 2>&1)"
        (cd /etc && exec timeout 30 python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1) &
        sleep 3
        echo "CHECK http=$(python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:8000/hostname", timeout=10).read().decode().strip())' 2>&1)"
        echo "CHECK rootsize=$(df -Pk / | awk 'NR == 2 { print $2 }')"
        if mountpoint -q /datakit; then
          echo "CHECK datakit=$(cat /datakit/hello)"
          echo "written by the machine" >/datakit/from-guest
        fi
        if mountpoint -q /srv/work; then
          echo "CHECK work=$(cat /srv/work/hello)"
          echo "CHECK work-write=$(touch /srv/work/x 2>/dev/null && echo allowed || echo refused)"
        fi
        poweroff
        """;

    [Fact]
    public async Task The_image_boots_from_its_disk_gets_a_lease_and_keeps_state_across_boots()
    {
        // Both are ./test's to provide (it runs as root and installs mmdebstrap): missing, they are a failure, not a skip.
        Assert.True(Environment.IsPrivilegedProcess, "building the machine image needs root: mmdebstrap --mode=root (./test runs as root)");
        Assert.True(ProcessRunner.Run("sh", ["-c", "command -v mmdebstrap"]).ExitCode == 0, "mmdebstrap is not installed (./test installs it)");
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string agent = Path.Combine(_work.FullName, "agent");
        File.WriteAllText(agent, StandInAgent);

        var clock = Stopwatch.StartNew();
        ProcessResult build = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["image", "build", "--agent", agent, "--json"],
            BuildTimeout, cancellationToken: cancel);
        Assert.True(build.ExitCode == 0, $"kit image build failed\n{Text.Tail(build.Output, 6000)}");
        using JsonDocument json = JsonDocument.Parse(build.StandardOutput);
        string image = json.RootElement.GetProperty("image").GetString()!;
        string kernel = json.RootElement.GetProperty("kernel").GetString()!;
        string initrd = json.RootElement.GetProperty("initrd").GetString()!;
        output.WriteLine($"kit image build: {clock.Elapsed.TotalSeconds:F1} s\n{Text.Tail(build.StandardError, 2000)}");

        // The disk is the machine's own copy; the cached image stays as built.
        string disk = Path.Combine(_work.FullName, "machines", "box", "disk.ext4");
        Assert.Throws<Kit.Cli.CliException>(() => MachineDisk.Create(image, disk, 1 << 20));
        MachineDisk.Create(image, disk, 2UL << 30);
        Assert.Equal(2L << 30, new FileInfo(disk).Length);
        Assert.Throws<Kit.Cli.CliException>(() => MachineDisk.Create(image, disk, 2UL << 30));
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(disk)!, ".*.tmp"));

        Dictionary<string, string> first = await BootAsync(kernel, initrd, disk, 1, cancel);
        Assert.True(long.Parse(first["rootsize"], System.Globalization.CultureInfo.InvariantCulture) > 1_800_000, $"root is {first["rootsize"]} KiB, not ~2 GiB");

        Assert.Throws<Kit.Cli.CliException>(() => MachineDisk.Grow(disk, 1UL << 30));
        MachineDisk.Grow(disk, 3UL << 30);
        // Second boot with DataKit's tag (kit.datakit=virtio) and a read-only share from kit.mounts.
        string datakit = Directory.CreateDirectory(Path.Combine(_work.FullName, "datakit")).FullName;
        string work = Directory.CreateDirectory(Path.Combine(_work.FullName, "work")).FullName;
        File.WriteAllText(Path.Combine(datakit, "hello"), "from datakit");
        File.WriteAllText(Path.Combine(work, "hello"), "from work");
        string mounts = Convert.ToBase64String(Encoding.UTF8.GetBytes("tag:work /srv/work ro\n"));
        Dictionary<string, string> second = await BootAsync(kernel, initrd, disk, 2, cancel,
            ["--share", $"datakit={datakit}", "--share", $"work={work}"], $" kit.datakit=virtio kit.mounts={mounts}");
        Assert.True(long.Parse(second["rootsize"], System.Globalization.CultureInfo.InvariantCulture) > 2_800_000, $"root is {second["rootsize"]} KiB after growing to 3 GiB");
        Assert.Equal("from datakit", second.GetValueOrDefault("datakit"));
        Assert.Equal("written by the machine\n", File.ReadAllText(Path.Combine(datakit, "from-guest")));
        Assert.Equal("from work", second.GetValueOrDefault("work"));
        Assert.Equal("refused", second.GetValueOrDefault("work-write"));
        Assert.False(File.Exists(Path.Combine(work, "x")));
    }

    /// <summary>A kit.root that is not there is one clear console line and a poweroff, not a kernel panic.</summary>
    [Fact]
    public async Task A_missing_root_device_prints_an_error_and_powers_off()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage guest = await GuestImage.GetDefaultAsync(cancel);
        ProcessResult result = await ProcessRunner.RunAsync(KitCli.ExecutablePath,
            ["vm", "run", "--accel", "tcg", "--kernel", guest.Kernel, "--initrd", guest.Initrd, "--cmdline", "console=ttyS0 panic=-1 no_timer_check kit.root=/dev/vdz"],
            BootTimeout, cancellationToken: cancel);
        Assert.True(result.ExitCode == 0, result.Output);
        Assert.Contains("KIT-GUEST-ROOT-ERROR kit.root=/dev/vdz: no such block device", result.StandardOutput, StringComparison.Ordinal);
        Assert.DoesNotContain("Kernel panic", result.StandardOutput, StringComparison.Ordinal);
    }

    private async Task<Dictionary<string, string>> BootAsync(
        string kernel, string initrd, string disk, int expectedBoot, CancellationToken cancel, string[]? extraArgs = null, string extraCmdline = "")
    {
        using var dns = new TinyDnsServer();
        string cmd = Convert.ToBase64String(Encoding.UTF8.GetBytes(GuestScript));
        var clock = Stopwatch.StartNew();
        using RunningProcess kit = KitCli.Start([
            "vm", "run", "--accel", "tcg", "--kernel", kernel, "--initrd", initrd, "--disk", disk,
            "--memory", "1G", "--net", "vpnkit", "--dns-upstream", dns.EndPoint.ToString(), .. extraArgs ?? [],
            "--cmdline", $"console=ttyS0 panic=-1 no_timer_check kit.root=/dev/vda kit.hostname=box kit.cmd={cmd}{extraCmdline}"]);
        await kit.WaitForLineAsync(l => l.Contains("KIT-MACHINE-READY", StringComparison.Ordinal), BootTimeout, cancel);
        TimeSpan ready = clock.Elapsed;
        ProcessResult result = await kit.WaitAsync(TimeSpan.FromMinutes(2), cancel);
        string console = result.StandardOutput;
        output.WriteLine($"boot {expectedBoot}: KIT-MACHINE-READY after {ready.TotalSeconds:F1} s (wall, kit vm run start), off after {clock.Elapsed.TotalSeconds:F1} s\n{Text.Tail(console, 3000)}");

        Assert.True(result.ExitCode == 0, $"kit vm run exited {result.ExitCode}\n{Text.Tail(result.Output, 4000)}");
        Assert.Contains($"KIT-MACHINE-BOOT {expectedBoot}", console, StringComparison.Ordinal);
        Assert.Matches(@"KIT-MACHINE-NET 192\.168\.65\.\d+/24", console);
        Assert.Contains("reboot: Power down", console, StringComparison.Ordinal);
        var checks = new Dictionary<string, string>();
        foreach (Match m in CheckLine().Matches(console))
        {
            checks[m.Groups[1].Value] = m.Groups[2].Value.Trim();
        }
        Assert.Equal("box", checks.GetValueOrDefault("hostname"));
        Assert.Equal(expectedBoot.ToString(System.Globalization.CultureInfo.InvariantCulture), checks.GetValueOrDefault("count"));
        Assert.Equal("running", checks.GetValueOrDefault("agent"));
        Assert.Equal("present", checks.GetValueOrDefault("modules"));
        Assert.Equal("loaded", checks.GetValueOrDefault("overlay"));
        Assert.Equal(TinyDnsServer.Address.ToString(), checks.GetValueOrDefault("resolved"));
        Assert.Equal("box", checks.GetValueOrDefault("http"));

        // init's shutdown (/etc/kit/shutdown) left the filesystem clean: e2fsck -n finds nothing to do.
        ProcessResult fsck = ProcessRunner.Run("e2fsck", ["-f", "-n", disk]);
        Assert.True(fsck.ExitCode == 0, $"e2fsck -fn after poweroff: exit {fsck.ExitCode}\n{fsck.Output}");
        return checks;
    }

    [GeneratedRegex(@"CHECK ([\w-]+)=(.*)$", RegexOptions.Multiline)]
    private static partial Regex CheckLine();
}
