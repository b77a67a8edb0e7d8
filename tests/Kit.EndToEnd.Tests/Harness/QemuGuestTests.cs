using Kit.Testing;

namespace Kit.EndToEnd.Tests.Harness;

/// <summary>The default guest boots under QEMU TCG, runs a test script and reports its exit code.</summary>
[Trait("Tier", "Real")]
public sealed class QemuGuestTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Default_guest_runs_the_script_and_reports_its_exit_code()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        const string script = """
            set -e
            echo "kernel=$(uname -r)"
            busybox 2>&1 | head -n 1
            modprobe virtio_net
            grep -q '^virtio_net ' /proc/modules && echo "virtio_net=loaded"
            [ -x /usr/bin/iperf3 ] && iperf3 --version | head -n 1
            [ -x /etc/udhcpc/default.script ] && echo "dhcp-script=present"
            echo "hostname=$(hostname)"
            exit 42
            """;

        GuestResult result = await QemuGuest.RunAsync(script, cancellationToken: cancel);

        output.WriteLine($"boot to marker {result.BootTime.TotalSeconds:F1} s, total {result.Elapsed.TotalSeconds:F1} s");
        output.WriteLine(result.Output);
        Assert.Equal(42, result.ExitCode);
        Assert.Contains($"kernel={image.KernelVersion}\n", result.Output, StringComparison.Ordinal);
        Assert.Contains("BusyBox v", result.Output, StringComparison.Ordinal);
        Assert.Contains("virtio_net=loaded", result.Output, StringComparison.Ordinal);
        Assert.Contains("iperf 3.", result.Output, StringComparison.Ordinal);
        Assert.Contains("dhcp-script=present", result.Output, StringComparison.Ordinal);
        Assert.Contains("hostname=kit-guest", result.Output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Slirp_lease_is_applied_by_the_udhcpc_script()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        // Not restrict=on: then slirp offers no router and no DNS. The script sends nothing but DHCP, and never
        // queries slirp's DNS (it would forward to a resolver off this machine).
        var options = new QemuGuestOptions().AddNetwork(QemuNetwork.User());
        const string script = """
            ip link set eth0 up
            udhcpc -i eth0 -n -q -t 10 -T 3 || exit 3
            echo "--- addr"; ip -4 addr show dev eth0
            echo "--- route"; ip route
            echo "--- resolv"; cat /etc/resolv.conf
            """;

        GuestResult result = await QemuGuest.RunAsync(script, options, cancel);

        output.WriteLine($"boot {result.BootTime.TotalSeconds:F1} s, total {result.Elapsed.TotalSeconds:F1} s");
        output.WriteLine(result.Output);
        foreach (string expected in (string[])["inet 10.0.2.15/24", "default via 10.0.2.2 dev eth0", "nameserver 10.0.2.3"])
        {
            Assert.True(result.ExitCode == 0 && result.Output.Contains(expected, StringComparison.Ordinal),
                $"exit {result.ExitCode}, expected \"{expected}\" in the guest output\n{result.Serial}");
        }
    }

    [Fact]
    public async Task Timeout_kills_qemu_and_reports_the_serial_tail()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        // The timeout counts from QEMU's start; waiting for the line first makes the failure text deterministic.
        // The command comes from the kernel command line here (kit.cmd), the path other VMMs use.
        var options = new QemuGuestOptions { Timeout = TimeSpan.FromSeconds(12) };
        options.KernelArguments.Add(QemuGuest.KernelCommandArgument("echo waiting-forever; sleep 1000"));
        await using QemuGuest guest = await QemuGuest.StartAsync(script: null, options, cancel);
        await guest.WaitForSerialAsync("waiting-forever", TimeSpan.FromSeconds(90), cancel);
        int pid = guest.ProcessId;

        GuestFailedException failure = await Assert.ThrowsAsync<GuestFailedException>(() => guest.WaitForExitAsync(cancel));

        output.WriteLine(failure.Message);
        Assert.Contains("did not power off within 12 s", failure.Message, StringComparison.Ordinal);
        Assert.Contains("waiting-forever", failure.Message, StringComparison.Ordinal);
        Assert.False(IsQemu(pid), "QEMU still runs after the timeout");
    }

    private static bool IsQemu(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/comm").StartsWith("qemu", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }
}
