using Kit.Testing;

namespace Kit.EndToEnd.Tests.Harness;

/// <summary>The harness's virtio-9p share and virtio-blk disk reach the guest (ext4 with its crc32c module).</summary>
[Trait("Tier", "Real")]
public sealed class QemuStorageTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Guest_mounts_a_9p_share_and_an_ext4_disk()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-storage-");
        try
        {
            string share = Directory.CreateDirectory(Path.Combine(dir.FullName, "share")).FullName;
            string diskContent = Directory.CreateDirectory(Path.Combine(dir.FullName, "disk")).FullName;
            await File.WriteAllTextAsync(Path.Combine(share, "from-host.txt"), "hello over 9p\n", cancel);
            await File.WriteAllTextAsync(Path.Combine(diskContent, "on-disk.txt"), "hello from ext4\n", cancel);
            string image = Path.Combine(dir.FullName, "disk.img");
            (await ProcessRunner.RunAsync("mke2fs", ["-q", "-F", "-t", "ext4", "-d", diskContent, image, "8M"], cancellationToken: cancel)).EnsureSuccess();

            var options = new QemuGuestOptions().AddShare("data", share).AddDisk(image);
            const string script = """
                set -e
                mkdir -p /mnt/share /mnt/disk
                mount -t 9p -o trans=virtio,version=9p2000.L data /mnt/share
                cat /mnt/share/from-host.txt
                mount -t ext4 /dev/vda /mnt/disk
                cat /mnt/disk/on-disk.txt
                echo "written by the guest" >/mnt/share/from-guest.txt
                echo "guest wrote this to ext4" >/mnt/disk/guest.txt
                umount /mnt/disk
                umount /mnt/share
                """;

            GuestResult result = await QemuGuest.RunAsync(script, options, cancel);

            output.WriteLine($"boot {result.BootTime.TotalSeconds:F1} s, total {result.Elapsed.TotalSeconds:F1} s");
            output.WriteLine(result.Output);
            Assert.True(result.ExitCode == 0, $"guest script failed ({result.ExitCode})\n{result.Serial}");
            Assert.Contains("hello over 9p", result.Output, StringComparison.Ordinal);
            Assert.Contains("hello from ext4", result.Output, StringComparison.Ordinal);
            Assert.Equal("written by the guest\n", await File.ReadAllTextAsync(Path.Combine(share, "from-guest.txt"), cancel));
            // The guest's ext4 write survived its clean unmount: e2fsck agrees and debugfs reads it back.
            (await ProcessRunner.RunAsync("e2fsck", ["-f", "-n", image], cancellationToken: cancel)).EnsureSuccess();
            ProcessResult cat = (await ProcessRunner.RunAsync("debugfs", ["-R", "cat /guest.txt", image], cancellationToken: cancel)).EnsureSuccess();
            Assert.Equal("guest wrote this to ext4\n", cat.StandardOutput);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
