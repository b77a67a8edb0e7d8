using System.Net;
using System.Net.Sockets;
using Kit.DataKit.Client;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Data;

/// <summary>
/// The Linux kernel's v9fs as a DataKit client (issue 4): a QEMU TCG guest mounts `kit data serve` over TCP
/// (slirp maps the guest's 10.0.2.2 to the host's 127.0.0.1), drives a branch and a transaction with shell commands,
/// blocks on tree.live while the host commits, and the host checks the result with the git CLI.
/// </summary>
[Trait("Tier", "Real")]
public sealed class KernelMountTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("9p2000.L")]
    [InlineData("9p2000.u")]
    public async Task Linux_mounts_DataKit_commits_a_transaction_and_watches_the_host_commit(string dialect)
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        DirectoryInfo repo = Directory.CreateTempSubdirectory("kit-dk-kernel-");
        int port = LoopbackPort.Free();
        RunningProcess server = KitCli.Start("data", "serve", "--git", repo.FullName, "--listen-9p", $"tcp://127.0.0.1:{port}");
        try
        {
            // The guest script. Every step echoes a tag so a failure says where it stopped.
            string script = $$"""
                set -e
                ip link set eth0 up
                ip addr add 10.0.2.15/24 dev eth0
                modprobe 9pnet_fd
                mkdir -p /mnt/dk
                mount -t 9p -o trans=tcp,port={{port}},version={{dialect}},uname=root,access=any 10.0.2.2 /mnt/dk
                cd /mnt/dk
                echo "root: $(ls | tr '\n' ' ')"
                mkdir branch/master
                mkdir branch/master/transactions/t1
                t=branch/master/transactions/t1
                mkdir $t/rw/etc
                echo -n hello > $t/rw/etc/greeting
                printf '#!/bin/sh\necho hi\n' > $t/rw/run.sh
                chmod +x $t/rw/run.sh
                ln -s etc/greeting $t/rw/link
                echo -n "commit from the guest" > $t/msg
                echo commit > $t/ctl
                head=$(cat branch/master/head)
                echo "head=$head"
                echo "ro-greeting=$(cat branch/master/ro/etc/greeting)"
                [ -x branch/master/ro/run.sh ] && echo "ro-exec=yes"
                echo "ro-link=$(readlink branch/master/ro/link)"
                # Block on tree.live of etc/ while the host commits: the reader runs in the background and
                # the guest tells the host it is waiting by committing to a second branch.
                cat branch/master/watch/etc.node/tree.live > /tmp/live &
                reader=$!
                while [ ! -s /tmp/live ]; do sleep 0.2; done
                mkdir branch/ready
                mkdir branch/ready/transactions/r
                echo -n ready > branch/ready/transactions/r/rw/flag
                echo commit > branch/ready/transactions/r/ctl
                i=0
                while [ "$(wc -l < /tmp/live)" -lt 2 ] && [ $i -lt 300 ]; do sleep 0.2; i=$((i+1)); done
                kill $reader 2>/dev/null || true
                echo "live-lines=$(wc -l < /tmp/live)"
                sed 's/^/live: /' /tmp/live
                echo "ro-after=$(cat branch/master/ro/etc/greeting)"
                cd /
                umount /mnt/dk
                """;
            var options = new QemuGuestOptions { Timeout = TimeSpan.FromMinutes(4) };
            options.AddNetwork(QemuNetwork.User("restrict=off"));
            await using QemuGuest guest = await QemuGuest.StartAsync(script, options, cancel);

            // When the guest commits to `ready`, its tree.live reader is running: commit a change to etc/ on master.
            await using (DataKitClient client = await ConnectWithRetryAsync(port, cancel))
            {
                Branch ready = await client.BranchAsync("ready", cancel);
                await foreach (Commit? head in ready.WatchHeadAsync(cancel))
                {
                    if (head is not null)
                    {
                        break;
                    }
                }
                Branch master = await client.BranchAsync("master", cancel);
                await using Transaction t = await master.TransactionAsync(cancel);
                await t.ReplaceFileAsync("etc/greeting", "hello from the host"u8.ToArray(), cancel);
                await t.CommitAsync("commit from the host", cancel);
            }

            GuestResult result = await guest.WaitForExitAsync(cancel);
            output.WriteLine(result.Output);
            Assert.True(result.ExitCode == 0, $"guest script failed (exit {result.ExitCode})\n{result.Serial}");
            Assert.Contains("ro-greeting=hello", result.Output, StringComparison.Ordinal);
            Assert.Contains("ro-exec=yes", result.Output, StringComparison.Ordinal);
            Assert.Contains("ro-link=etc/greeting", result.Output, StringComparison.Ordinal);
            Assert.Contains("live-lines=2", result.Output, StringComparison.Ordinal);
            Assert.Contains("ro-after=hello from the host", result.Output, StringComparison.Ordinal);
            string[] live = result.Output.Split('\n').Where(l => l.StartsWith("live: ", StringComparison.Ordinal)).ToArray();
            Assert.Equal(2, live.Length);
            Assert.All(live, l => Assert.Matches("^live: D-[0-9a-f]{40}$", l.Trim()));
            Assert.NotEqual(live[0], live[1]);

            // The host's git sees both commits, in order, and the repository is sound.
            string guestHead = result.Output.Split('\n').Single(l => l.StartsWith("head=", StringComparison.Ordinal))["head=".Length..].Trim();
            string log = Git(repo.FullName, "log", "--format=%H %s", "master");
            string[] commits = log.Trim().Split('\n');
            Assert.Equal(2, commits.Length);
            Assert.EndsWith(" commit from the host", commits[0], StringComparison.Ordinal);
            Assert.Equal($"{guestHead} commit from the guest", commits[1]);
            // ProcessRunner collects output by lines, so compare the exact size separately from the text.
            Assert.Equal("hello", Git(repo.FullName, "show", $"{guestHead}:etc/greeting").TrimEnd('\n'));
            Assert.Equal("5", Git(repo.FullName, "cat-file", "-s", $"{guestHead}:etc/greeting").Trim());
            Assert.Contains("100755 blob", Git(repo.FullName, "ls-tree", guestHead, "run.sh"), StringComparison.Ordinal);
            Assert.Contains("120000 blob", Git(repo.FullName, "ls-tree", guestHead, "link"), StringComparison.Ordinal);
            Git(repo.FullName, "fsck", "--strict");
        }
        finally
        {
            server.Dispose();
            repo.Delete(recursive: true);
        }
    }

    private static async Task<DataKitClient> ConnectWithRetryAsync(int port, CancellationToken cancel)
    {
        if (!ListenAddress.TryParse($"tcp://127.0.0.1:{port}", out ListenAddress? address, out string error))
        {
            throw new InvalidOperationException(error);
        }
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return await DataKitClient.ConnectAsync(address!, cancel);
            }
            catch (Exception e) when (e is SocketException or IOException && attempt < 100)
            {
                await Task.Delay(100, cancel);
            }
        }
    }

    private static string Git(string repo, params string[] args) =>
        ProcessRunner.Run("git", ["-C", repo, .. args]).EnsureSuccess().StandardOutput;
}
