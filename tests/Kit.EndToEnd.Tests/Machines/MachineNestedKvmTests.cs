using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// A machine under Kit's own VMM (`--accel kvm`), inside the nested runner's L1 where /dev/kvm has SVM: `kit up` boots
/// the same Debian image under HyperKit (virtio-blk disk, Kit's virtio-vsock to the agent, virtio-9p DataKit), then
/// `kit exec` runs commands and `kit down` (no ACPI button in Kit's VMM: the agent's shutdown) stops it. The image is
/// the host's cached one, copied into the test's writable directory for L1, whose view of the host is read-only.
/// </summary>
[Trait("Tier", "Real")]
public sealed class MachineNestedKvmTests(ITestOutputHelper output)
{
    [Fact]
    public async Task A_machine_boots_under_kits_own_vmm_and_answers_exec()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage guest = await GuestImage.GetDefaultAsync(cancel);
        string work = Path.Combine(RepoPaths.Root, "artifacts", "test-work", $"machine-kvm-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        try
        {
            ProcessResult built = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["image", "build", "--json"], TimeSpan.FromMinutes(10), cancellationToken: cancel);
            Assert.True(built.ExitCode == 0, built.ToString());
            string imageDir;
            using (JsonDocument paths = JsonDocument.Parse(built.StandardOutput))
            {
                imageDir = Path.GetDirectoryName(paths.RootElement.GetProperty("image").GetString())!;
            }
            string images = Directory.CreateDirectory(Path.Combine(work, "images")).FullName;
            (await ProcessRunner.RunAsync("cp", ["-a", "--reflink=auto", "--sparse=always", imageDir, images], TimeSpan.FromMinutes(5), cancellationToken: cancel)).EnsureSuccess();

            string kit = Text.ShellQuote(KitCli.ExecutablePath);
            string script = $"""
                export XDG_DATA_HOME=/tmp/data XDG_RUNTIME_DIR=/tmp/run KIT_IMAGE_CACHE={Text.ShellQuote(images)}
                mkdir -p /tmp/data /tmp/run && chmod 700 /tmp/run
                {kit} up n --accel kvm --cpus 1 --memory 768M --dns-upstream 127.0.0.1:9 --timeout 600 > {work}/up.log 2>&1
                echo "up-exit=$?"
                echo "uname=$({kit} exec n -- uname -r)"
                {kit} exec n -- sh -c 'exit 7'; echo "exec-exit=$?"
                echo "hi" | {kit} exec n -- cat | sed 's/^/cat=/'
                {kit} status n --json > {work}/status.json; echo "status-exit=$?"
                {kit} down n > {work}/down.log 2>&1; echo "down-exit=$?"
                cp /tmp/data/kit/machines/n/machine.log {work}/machine.log 2>/dev/null
                """;
            var options = new NestedOptions { ResultsDirectory = work, Timeout = TimeSpan.FromMinutes(15), MemoryMiB = 4096 };
            options.Environment["KIT_GUEST_CACHE"] = Path.GetDirectoryName(Path.GetDirectoryName(guest.Kernel))!;
            GuestResult l1 = await NestedRunner.RunAsync(script, options, cancel);

            string Read(string name) => File.Exists(Path.Combine(work, name)) ? File.ReadAllText(Path.Combine(work, name)) : $"(no {name})";
            output.WriteLine($"L1 {l1.Elapsed.TotalSeconds:F1} s\n{l1.Output}\n--- up ---\n{Read("up.log")}\n--- down ---\n{Read("down.log")}\n--- machine.log ---\n{Text.Tail(Read("machine.log"), 4000)}");
            Assert.True(l1.Output.Contains("up-exit=0", StringComparison.Ordinal), $"kit up failed under kvm\n{Read("up.log")}\n{Text.Tail(Read("machine.log"), 4000)}");
            Assert.Contains("is running (kvm", Read("up.log"), StringComparison.Ordinal);
            Assert.Matches(@"uname=6\.\d+", l1.Output);
            Assert.Contains("exec-exit=7", l1.Output, StringComparison.Ordinal);
            Assert.Contains("cat=hi", l1.Output, StringComparison.Ordinal);
            using (JsonDocument status = JsonDocument.Parse(Read("status.json")))
            {
                Assert.Equal("kvm", status.RootElement.GetProperty("accel").GetString());
                Assert.Equal("running", status.RootElement.GetProperty("state").GetString());
            }
            Assert.Contains("down-exit=0", l1.Output, StringComparison.Ordinal);
            Assert.Contains("asking the agent to shut down", Read("machine.log"), StringComparison.Ordinal);
            Assert.Contains("the machine stopped", Read("machine.log"), StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }
}
