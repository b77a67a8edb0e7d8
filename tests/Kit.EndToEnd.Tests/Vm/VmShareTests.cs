using Kit.Testing;

namespace Kit.EndToEnd.Tests.Vm;

/// <summary>
/// Issue 6's proof of virtio-9p with the Linux kernel as the client: inside the nested runner's L1, `kit vm run`
/// boots the default guest with three shares: a read-write host directory (under the test's results directory, so
/// the host reads what the guest wrote), the same kind of directory read-only, and `kit data serve` (running in L1)
/// relayed over TCP. The guest mounts all three with trans=virtio, writes a file, is refused a write on the read-only
/// share, commits a DataKit transaction, and the host checks the file and `git log` of the repository.
/// A quick dd measures the share's throughput (printed, not asserted).
/// </summary>
[Trait("Tier", "Real")]
public sealed class VmShareTests(ITestOutputHelper output)
{
    private const int DataPort = 5640;

    private const string GuestScript = """
        set -e
        mkdir -p /mnt/host /mnt/ro /mnt/data
        mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 host /mnt/host
        echo hello-from-the-guest > /mnt/host/from-guest
        mkdir /mnt/host/dir
        ln -s ../from-guest /mnt/host/dir/link
        echo "host-ls=$(ls /mnt/host | tr '\n' ' ')"
        echo "host-readback=$(cat /mnt/host/dir/link)"
        cs() { cut -d' ' -f1 /proc/uptime | tr -d .; }
        s=$(cs); dd if=/dev/zero of=/mnt/host/big bs=1M count=32 conv=fsync 2>/dev/null; e=$(cs)
        echo "dd-write: 32 MiB in $((e - s))0 ms"
        echo 3 > /proc/sys/vm/drop_caches
        s=$(cs); dd if=/mnt/host/big of=/dev/null bs=1M 2>/dev/null; e=$(cs)
        echo "dd-read: 32 MiB in $((e - s))0 ms"
        echo "size=$(wc -c < /mnt/host/big)"
        rm /mnt/host/big
        mount -t 9p -o trans=virtio,version=9p2000.L ro /mnt/ro
        echo "ro-read=$(cat /mnt/ro/readme)"
        if sh -c 'echo x > /mnt/ro/new' 2>/tmp/err; then echo ro-write=allowed; else echo "ro-write=refused $(cat /tmp/err)"; fi
        if rm /mnt/ro/readme 2>/dev/null; then echo ro-rm=allowed; else echo ro-rm=refused; fi
        mount -t 9p -o trans=virtio,version=9p2000.L,uname=root,access=any data /mnt/data
        cd /mnt/data
        mkdir branch/master
        mkdir branch/master/transactions/t1
        t=branch/master/transactions/t1
        echo -n hello-datakit > $t/rw/greeting
        echo -n "commit from the nested guest" > $t/msg
        echo commit > $t/ctl
        echo "head=$(cat branch/master/head)"
        cd /
        umount /mnt/data /mnt/ro /mnt/host
        """;

    [Fact]
    public async Task Guest_mounts_a_host_directory_a_read_only_one_and_DataKit_over_virtio_9p()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        // Inside L1 the host's / is read-only: the shared directories live in the read-write results directory.
        string work = Path.Combine(RepoPaths.Root, "artifacts", "test-work", $"vm-share-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        try
        {
            string shared = Path.Combine(work, "shared");
            string readOnly = Path.Combine(work, "readonly");
            Directory.CreateDirectory(shared);
            Directory.CreateDirectory(readOnly);
            File.WriteAllText(Path.Combine(readOnly, "readme"), "read-only content\n");
            string initrd = Path.Combine(work, "share.initrd");
            await image.WriteInitrdAsync(initrd, GuestScript, cancellationToken: cancel);

            string kit = KitCli.ExecutablePath;
            // The DataKit store lives on L1's tmpfs (git on the results 9p mount would only test QEMU's server) and is
            // copied next to the results afterwards for the host's git.
            string vm = Text.ShellJoin(
            [
                kit, "vm", "run", "--kernel", image.Kernel, "--initrd", initrd, "--memory", "512M",
                "--cmdline", "console=ttyS0 reboot=k panic=-1 no_timer_check",
                "--share", $"host={shared}", "--share", $"ro={readOnly},ro", "--share", $"data=tcp://127.0.0.1:{DataPort}",
            ]);
            string command = $"""
                {Text.ShellJoin([kit, "data", "serve", "--git", "/tmp/repo", "--listen-9p", $"tcp://127.0.0.1:{DataPort}"])} >{work}/data.log 2>&1 &
                data=$!
                i=0
                until bash -c 'echo > /dev/tcp/127.0.0.1/{DataPort}' 2>/dev/null || [ $i -ge 300 ]; do sleep 0.2; i=$((i+1)); done
                {vm} >{work}/share.console 2>&1
                echo "share-exit=$?"
                kill $data
                wait $data
                cp -a /tmp/repo {work}/repo
                """;
            var options = new NestedOptions { ResultsDirectory = work, Timeout = TimeSpan.FromMinutes(15) };

            GuestResult l1 = await NestedRunner.RunAsync(command, options, cancel);

            string console = ReadIfExists(Path.Combine(work, "share.console"));
            output.WriteLine($"L1 boot {l1.BootTime.TotalSeconds:F1} s, total {l1.Elapsed.TotalSeconds:F1} s\n{l1.Output}");
            output.WriteLine($"--- guest console ---\n{Text.Tail(console, 6000)}\n--- kit data serve ---\n{Text.Tail(ReadIfExists(Path.Combine(work, "data.log")), 2000)}");

            Assert.True(l1.Output.Contains("share-exit=0", StringComparison.Ordinal), $"kit vm run did not exit 0\n{l1.Output}\n{Text.Tail(console, 6000)}");
            Assert.Contains("KIT-GUEST-EXIT 0", console, StringComparison.Ordinal);

            // The read-write share: the host reads what the guest wrote, symlink included.
            Assert.Equal("hello-from-the-guest\n", File.ReadAllText(Path.Combine(shared, "from-guest")));
            Assert.Equal("../from-guest", new FileInfo(Path.Combine(shared, "dir", "link")).LinkTarget);
        Assert.Contains("size=33554432", console, StringComparison.Ordinal);
            Assert.Contains("host-readback=hello-from-the-guest", console, StringComparison.Ordinal);
            Assert.False(File.Exists(Path.Combine(shared, "big")));

            // The read-only share: readable, and every change refused.
            Assert.Contains("ro-read=read-only content", console, StringComparison.Ordinal);
            Assert.Contains("ro-write=refused", console, StringComparison.Ordinal);
            Assert.Contains("Read-only file system", console, StringComparison.Ordinal);
            Assert.Contains("ro-rm=refused", console, StringComparison.Ordinal);
            Assert.Equal(["readme"], Directory.GetFileSystemEntries(readOnly).Select(Path.GetFileName).ToArray());

            // DataKit through virtio-9p: the guest's commit is in git.
            string head = console.Split('\n').Single(l => l.StartsWith("head=", StringComparison.Ordinal))["head=".Length..].Trim();
            string repo = Path.Combine(work, "repo");
            string log = ProcessRunner.Run("git", ["-C", repo, "log", "--format=%H %s", "master"]).EnsureSuccess().StandardOutput.Trim();
            Assert.Equal($"{head} commit from the nested guest", log);
            Assert.Equal("hello-datakit", ProcessRunner.Run("git", ["-C", repo, "show", $"{head}:greeting"]).EnsureSuccess().StandardOutput.TrimEnd('\n'));
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static string ReadIfExists(string path) => File.Exists(path) ? File.ReadAllText(path) : "(no file)";
}
