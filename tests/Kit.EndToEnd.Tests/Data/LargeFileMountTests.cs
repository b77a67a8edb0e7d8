using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Data;

/// <summary>
/// Issue 16, "Blobs stream": the Linux kernel's v9fs writes a 1 GiB sparse file into a DataKit transaction and
/// commits it, and `kit data serve`'s peak RSS stays far below the file's size (before, one write at 512 MiB took
/// the server's RSS to 1.6 GB). git checks the blob: size and the id of the exact expected bytes.
/// </summary>
[Trait("Tier", "Real")]
public sealed class LargeFileMountTests(ITestOutputHelper output)
{
    private const long FileSize = 1L << 30;
    private const int Chunk = 1 << 20;
    // Where the guest writes a MiB of text (in MiB): the start, the middle, past 512 MiB, and the last MiB.
    private static readonly int[] ChunkAt = [0, 100, 513, 1023];
    // The bound on the server's peak RSS (28 MiB measured on 2026-12-07): the file is 1 GiB; the server holds a 4 MiB read
    // window and 256 KiB buffers.
    private const long MaxPeakRssMiB = 100;

    private static byte[] ChunkBytes(int i)
    {
        // What `yes "chunk I" | head -c 1048576` writes.
        byte[] line = Encoding.ASCII.GetBytes($"chunk {i}\n");
        byte[] b = new byte[Chunk];
        for (int at = 0; at < Chunk; at += line.Length)
        {
            line.AsSpan(0, Math.Min(line.Length, Chunk - at)).CopyTo(b.AsSpan(at));
        }
        return b;
    }

    [Fact]
    public async Task Linux_writes_a_1_GiB_sparse_file_and_commits_it_while_the_server_stays_small()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        DirectoryInfo repo = Directory.CreateTempSubdirectory("kit-dk-sparse-");
        int port = LoopbackPort.Free();
        RunningProcess server = KitCli.Start("data", "serve", "--git", repo.FullName, "--listen-9p", $"tcp://127.0.0.1:{port}");
        try
        {
            var writes = new StringBuilder();
            for (int i = 0; i < ChunkAt.Length; i++)
            {
                // bs=64 KiB from a file on the guest's own RAM disk, so dd never sees a short read.
                writes.Append(CultureInfo.InvariantCulture,
                    $"yes 'chunk {i}' | head -c {Chunk} > /tmp/c{i}\ndd if=/tmp/c{i} of=$t/rw/sparse bs=65536 seek={ChunkAt[i] * 16} conv=notrunc 2>/dev/null\n");
            }
            string script = $$"""
                set -e
                ip link set eth0 up
                ip addr add 10.0.2.15/24 dev eth0
                modprobe 9pnet_fd
                mkdir -p /mnt/dk
                mount -t 9p -o trans=tcp,port={{port}},version=9p2000.L,uname=root,access=any,msize=262144 10.0.2.2 /mnt/dk
                cd /mnt/dk
                mkdir branch/master
                mkdir branch/master/transactions/t1
                t=branch/master/transactions/t1
                : > $t/rw/sparse
                {{writes}}
                echo "rw-size=$(stat -c %s $t/rw/sparse)"
                echo -n "a 1 GiB sparse file" > $t/msg
                echo commit > $t/ctl
                echo "head=$(cat branch/master/head)"
                echo "ro-size=$(stat -c %s branch/master/ro/sparse)"
                # A read at 513 MiB: the server inflates forward to it, holding only its window.
                echo "ro-513=$(dd if=branch/master/ro/sparse bs=65536 skip=$((513 * 16)) count=16 2>/dev/null | md5sum | cut -d' ' -f1)"
                echo "chunk-2=$(md5sum < /tmp/c2 | cut -d' ' -f1)"
                cd /
                umount /mnt/dk
                """;
            var options = new QemuGuestOptions { Timeout = TimeSpan.FromMinutes(6) };
            options.AddNetwork(QemuNetwork.User("restrict=off"));
            await using QemuGuest guest = await QemuGuest.StartAsync(script, options, cancel);
            GuestResult result = await guest.WaitForExitAsync(cancel);
            output.WriteLine(result.Output);
            Assert.True(result.ExitCode == 0, $"guest script failed (exit {result.ExitCode})\n{result.Serial}");
            Assert.Contains($"rw-size={FileSize}", result.Output, StringComparison.Ordinal);
            Assert.Contains($"ro-size={FileSize}", result.Output, StringComparison.Ordinal);
            string Value(string key) => result.Output.Split('\n').Single(l => l.StartsWith(key + "=", StringComparison.Ordinal))[(key.Length + 1)..].Trim();
            Assert.Equal(Value("chunk-2"), Value("ro-513"));

            long peakMiB = PeakRssKiB(server.Process.Id) / 1024;
            output.WriteLine($"server peak RSS: {peakMiB} MiB");
            Assert.InRange(peakMiB, 1, MaxPeakRssMiB);

            Assert.Equal(FileSize.ToString(CultureInfo.InvariantCulture), Git(repo.FullName, "cat-file", "-s", "master:sparse").Trim());
            Assert.Equal(ExpectedBlobId(), Git(repo.FullName, "rev-parse", "master:sparse").Trim());
            Assert.Equal(Value("head"), Git(repo.FullName, "rev-parse", "master").Trim());
            Git(repo.FullName, "fsck", "--strict");
        }
        finally
        {
            server.Dispose();
            repo.Delete(recursive: true);
        }
    }

    /// <summary>git's id of the expected bytes (SHA-1 of "blob SIZE\0" + content), computed without holding them.</summary>
    private static string ExpectedBlobId()
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
        sha.AppendData(Encoding.ASCII.GetBytes($"blob {FileSize}\0"));
        byte[] zeros = new byte[Chunk];
        for (int mib = 0, next = 0; mib < FileSize / Chunk; mib++)
        {
            if (next < ChunkAt.Length && ChunkAt[next] == mib)
            {
                sha.AppendData(ChunkBytes(next++));
            }
            else
            {
                sha.AppendData(zeros);
            }
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>VmHWM of /proc/PID/status: the process's peak resident set, in KiB.</summary>
    private static long PeakRssKiB(int pid)
    {
        foreach (string l in File.ReadLines($"/proc/{pid}/status"))
        {
            if (l.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                return long.Parse(l["VmHWM:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException($"no VmHWM for {pid}");
    }

    private static string Git(string repo, params string[] args) =>
        ProcessRunner.Run("git", ["-C", repo, .. args], TimeSpan.FromMinutes(3)).EnsureSuccess().StandardOutput;
}
