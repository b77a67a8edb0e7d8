using Kit.Testing;

namespace Kit.EndToEnd.Tests.Vm;

/// <summary>
/// `kit up` end to end, inside the nested runner's L1 (where /dev/kvm has SVM): the default guest boots with VPNKit
/// in-process as its network and DataKit mounted over virtio-9p, takes a DHCP lease, resolves the host alias through
/// the DNS forwarder and commits into DataKit; the host then reads that commit with git. Stdin is not a terminal,
/// so the guest powers off after the demo and `kit up` exits 0.
/// </summary>
[Trait("Tier", "Real")]
public sealed class KitUpTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Kit_up_boots_the_guest_with_vpnkit_and_datakit_and_the_demo_commits()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string work = Path.Combine(RepoPaths.Root, "artifacts", "test-work", $"kit-up-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        try
        {
            string repo = Path.Combine(work, "store");
            string console = Path.Combine(work, "up.console");
            // The guest is already built on the host; inside L1 kit up finds it in the same (read-only) cache. The DNS
            // upstream is a closed loopback port: the demo only asks for a built-in name.
            string command = Text.ShellJoin([KitCli.ExecutablePath, "demo", "--git", repo, "--dns-upstream", "127.0.0.1:9"])
                + $" </dev/null >{console} 2>&1\necho \"demo-exit=$?\"";
            var options = new NestedOptions { ResultsDirectory = work, Timeout = TimeSpan.FromMinutes(10) };
            options.Environment["KIT_GUEST_CACHE"] = Path.GetDirectoryName(Path.GetDirectoryName(image.Kernel))!;

            GuestResult l1 = await NestedRunner.RunAsync(command, options, cancel);

            string text = File.Exists(console) ? File.ReadAllText(console) : "(no console file)";
            output.WriteLine($"L1 {l1.Elapsed.TotalSeconds:F1} s\n{l1.Output}\n--- kit up ---\n{Text.Tail(text, 6000)}");
            Assert.True(l1.Output.Contains("demo-exit=0", StringComparison.Ordinal), $"kit up did not exit 0\n{l1.Output}\n{Text.Tail(text, 6000)}");
            Assert.Matches(@"kit demo: eth0 192\.168\.65\.\d+/24 via 192\.168\.65\.1", text);
            Assert.Contains("kit demo: host.docker.internal is 192.168.65.2", text, StringComparison.Ordinal);
            Assert.Contains("kit demo: DataKit is mounted at /datakit", text, StringComparison.Ordinal);

            string log = ProcessRunner.Run("git", ["-C", repo, "log", "--format=%s", "master"]).EnsureSuccess().StandardOutput;
            Assert.Contains("kit demo: the guest booted and recorded its network", log, StringComparison.Ordinal);
            string cpus = ProcessRunner.Run("git", ["-C", repo, "show", "master:vm/cpus"]).EnsureSuccess().StandardOutput;
            Assert.Equal("2", cpus.Trim());
            ProcessRunner.Run("git", ["-C", repo, "fsck", "--strict"]).EnsureSuccess();
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }
}
