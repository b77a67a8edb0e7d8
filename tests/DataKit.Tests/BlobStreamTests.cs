using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Kit.DataKit.Fs;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using Kit.Testing;
using LibGit2Sharp;

namespace Kit.DataKit.Tests;

/// <summary>
/// Issue 16, "Blobs stream": the cursor that reads a blob without loading it (loose and packed), the streaming
/// loose-object writer checked by git itself, and transaction files that live in sparse spill files.
/// </summary>
public sealed class BlobStreamTests : DataKitTestBase
{
    private string WriteWithGit(byte[] content)
    {
        string file = Path.Combine(GitDir, "content-" + Guid.NewGuid().ToString("N"));
        File.WriteAllBytes(file, content);
        try
        {
            return Git("hash-object", "-w", file).Trim();
        }
        finally
        {
            File.Delete(file);
        }
    }

    private static byte[] RandomBytes(int n, int seed)
    {
        byte[] b = new byte[n];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>Reads the blob from <paramref name="from"/> to its end through the cursor in <paramref name="chunk"/>-byte reads.</summary>
    private static byte[] ReadAll(BlobCursor cursor, int chunk, long from = 0)
    {
        var all = new MemoryStream();
        byte[] buffer = new byte[chunk];
        for (long at = from; ;)
        {
            int n = cursor.Read(at, buffer);
            if (n == 0)
            {
                break;
            }
            all.Write(buffer, 0, n);
            at += n;
        }
        return all.ToArray();
    }

    // Sizes at the window's edges: exactly a window, a read's cap (half a window) and one past, and the small-blob line.
    [Theory]
    [InlineData(BlobCursor.WindowSize, 1024 * 1024)]
    [InlineData(BlobCursor.WindowSize + 1, 1024 * 1024)]
    [InlineData(BlobCursor.WindowSize / 2, BlobCursor.WindowSize)]
    [InlineData(3 * BlobCursor.WindowSize + 7, 65536 - 24)]
    [InlineData((int)GitStore.SmallBlob + 1, 8192)]
    public void ALooseBlobReadsForwardInAnyChunkSizeAndMatches(int size, int chunk)
    {
        byte[] content = RandomBytes(size, size);
        var id = new ObjectId(WriteWithGit(content));
        Assert.Equal(size, Server.Store.BlobSize(id));
        using BlobCursor cursor = Server.Store.OpenBlob(id);
        Assert.Equal(size, cursor.Length);
        Assert.Equal(content, ReadAll(cursor, chunk));
        Assert.Equal(1, cursor.Opens);
    }

    [Fact]
    public void SeekingBackInsideTheWindowReusesItAndFurtherBackRestarts()
    {
        byte[] content = RandomBytes(3 * BlobCursor.WindowSize, 7);
        var id = new ObjectId(WriteWithGit(content));
        using BlobCursor cursor = Server.Store.OpenBlob(id);
        byte[] buffer = new byte[100_000];
        // Readahead out of order: the second chunk, then the first.
        Assert.Equal(buffer.Length, cursor.Read(100_000, buffer));
        Assert.Equal(content.AsSpan(100_000, 100_000).ToArray(), buffer.ToArray());
        Assert.Equal(buffer.Length, cursor.Read(0, buffer));
        Assert.Equal(content.AsSpan(0, 100_000).ToArray(), buffer.ToArray());
        Assert.Equal(1, cursor.Opens);
        // Far ahead skips; then far back restarts from the first byte.
        long far = (2 * BlobCursor.WindowSize) + 12345;
        Assert.Equal(buffer.Length, cursor.Read(far, buffer));
        Assert.Equal(content.AsSpan((int)far, 100_000).ToArray(), buffer);
        Assert.Equal(10, cursor.Read(5, buffer.AsSpan(0, 10)));
        Assert.Equal(content.AsSpan(5, 10).ToArray(), buffer.AsSpan(0, 10).ToArray());
        Assert.Equal(2, cursor.Opens);
        // The end reads empty; past the end is EINVAL (the original's rule for normal files).
        Assert.Equal(0, cursor.Read(content.Length, buffer));
        Assert.Equal(Errno.EINVAL, Assert.Throws<VfsException>(() => cursor.Read(content.Length + 1L, buffer)).Errno);
        Assert.Equal(1, cursor.Read(content.Length - 1L, buffer));
        Assert.Equal(content[^1], buffer[0]);
    }

    [Fact]
    public void APackedBlobStreamsFromThePackAndADeltaThroughGitAndBothSeekBack()
    {
        byte[] content = RandomBytes((2 * BlobCursor.WindowSize) + 3, 11);
        byte[] edited = (byte[])content.Clone();
        edited[1000] ^= 0xff;
        edited[^5] ^= 0x55;
        string sha = WriteWithGit(content), sha2 = WriteWithGit(edited);
        Git("update-ref", "refs/test/blob", sha);
        Git("update-ref", "refs/test/blob2", sha2);
        // Into one pack, deltas computed afresh (one blob becomes a delta of the other), the loose copies gone.
        Git("repack", "-a", "-d", "-f", "-q", "--window=10", "--depth=10");
        Git("prune-packed");
        Assert.False(File.Exists(Path.Combine(Server.Store.GitDir, "objects", sha[..2], sha[2..])));
        string idx = Directory.GetFiles(Path.Combine(Server.Store.GitDir, "objects", "pack"), "*.idx").Single();
        // verify-pack -v: "sha type size size-in-pack offset", plus "depth base-sha" for a delta.
        string[] listing = Git("verify-pack", "-v", idx).Split('\n');
        bool IsDelta(string s) => listing.Single(l => l.StartsWith(s, StringComparison.Ordinal)).Split(' ', StringSplitOptions.RemoveEmptyEntries).Length == 7;
        Assert.NotEqual(IsDelta(sha), IsDelta(sha2));
        foreach ((string s, byte[] bytes) in (ReadOnlySpan<(string, byte[])>)[(sha, content), (sha2, edited)])
        {
            var id = new ObjectId(s);
            // A blob stored whole is read from the pack itself; a delta is git's to resolve.
            using (Stream? direct = PackedBlob.Open(Server.Store.GitDir, id, out long size))
            {
                Assert.Equal(IsDelta(s), direct is null);
                Assert.Equal(direct is null ? 0 : bytes.Length, size);
            }
            Assert.Equal(bytes.Length, Server.Store.BlobSize(id));
            using BlobCursor cursor = Server.Store.OpenBlob(id);
            Assert.Equal(bytes, ReadAll(cursor, 1024 * 1024));
            byte[] buffer = new byte[4096];
            Assert.Equal(4096, cursor.Read(1, buffer));
            Assert.Equal(bytes.AsSpan(1, 4096).ToArray(), buffer.ToArray());
            Assert.Equal(2, cursor.Opens);
        }
    }

    [Fact]
    public void PackFilesThatDoNotParseAreSkippedAndNeverTrusted()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-packs-");
        try
        {
            string packs = Directory.CreateDirectory(Path.Combine(dir.FullName, "objects", "pack")).FullName;
            var id = new ObjectId("42" + new string('7', 38));
            byte[] name = id.RawId;
            // A version-2 index that holds exactly this name, pointing where the test says.
            byte[] Index(uint count, uint offset, long large = -1)
            {
                var idx = new MemoryStream();
                idx.Write([0xff, (byte)'t', (byte)'O', (byte)'c', 0, 0, 0, 2]);
                for (int b = 0; b < 256; b++)
                {
                    uint n = b >= name[0] ? count : 0;
                    idx.Write([(byte)(n >> 24), (byte)(n >> 16), (byte)(n >> 8), (byte)n]);
                }
                idx.Write(name);
                idx.Write(new byte[4]); // crc
                idx.Write([(byte)(offset >> 24), (byte)(offset >> 16), (byte)(offset >> 8), (byte)offset]);
                if (large >= 0)
                {
                    idx.Write(BitConverter.GetBytes(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(large)));
                }
                idx.Write(new byte[40]); // checksums
                return idx.ToArray();
            }
            byte[] pack = [.. "PACK"u8, 0, 0, 0, 2, 0, 0, 0, 1, 0x3f, 0x00, .. new byte[40]]; // an entry of type 3 with a size but no zlib
            byte[] noise = RandomBytes(5000, 3);
            (string Name, byte[] Idx)[] cases =
            [
                ("noise", noise),
                ("truncated", Index(1, 12)[..600]),
                ("count-beyond-file", Index(200_000, 12)),
                ("offset-beyond-pack", Index(1, 0x7fff_0000)),
                ("offset-in-header", Index(1, 3)),
                ("large-offset-missing", Index(1, 0x8000_0005)),
                ("large-offset-negative", Index(1, 0x8000_0000, long.MinValue)),
            ];
            foreach ((string n, byte[] bytes) in cases)
            {
                File.WriteAllBytes(Path.Combine(packs, $"pack-{n}.idx"), bytes);
                File.WriteAllBytes(Path.Combine(packs, $"pack-{n}.pack"), pack);
                Assert.Null(PackedBlob.Open(dir.FullName, id, out _));
                File.Delete(Path.Combine(packs, $"pack-{n}.idx"));
            }
            // The same index pointing at the entry opens it; the entry's zlib is missing, so reading it fails cleanly.
            File.WriteAllBytes(Path.Combine(packs, "pack-good.idx"), Index(1, 12));
            File.WriteAllBytes(Path.Combine(packs, "pack-good.pack"), pack);
            using Stream? s = PackedBlob.Open(dir.FullName, id, out long size);
            Assert.NotNull(s);
            Assert.Equal(15, size);
            Assert.ThrowsAny<InvalidDataException>(() => s.ReadExactly(new byte[15]));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task TheCursorInflatesAheadWhileTheReaderIsAway()
    {
        byte[] content = RandomBytes(3 * BlobCursor.WindowSize, 13);
        var id = new ObjectId(WriteWithGit(content));
        using BlobCursor cursor = Server.Store.OpenBlob(id);
        byte[] buffer = new byte[1024 * 1024];
        Assert.Equal(buffer.Length, cursor.Read(0, buffer));
        // Between two reads the pump fills the ring: all of it, since the reader still needs the first byte.
        var watch = Stopwatch.StartNew();
        while (cursor.Inflated < BlobCursor.WindowSize && watch.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }
        Assert.Equal(BlobCursor.WindowSize, cursor.Inflated);
        // Never past the ring: the bytes still to be read are not overwritten.
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.Equal(BlobCursor.WindowSize, cursor.Inflated);
        Assert.Equal(content.AsSpan(buffer.Length).ToArray(), ReadAll(cursor, buffer.Length, buffer.Length));
        Assert.Equal(1, cursor.Opens);
    }

    [Fact]
    public async Task ACorruptLooseObjectIsEioAtTheDamageAndTheServerGoesOn()
    {
        byte[] content = RandomBytes(3 * BlobCursor.WindowSize, 17);
        string sha = WriteWithGit(content);
        string path = Path.Combine(Server.Store.GitDir, "objects", sha[..2], sha[2..]);
        // The object's zlib stream cut short at about 6 MiB of its 12: a disk or copy that lost its tail.
        byte[] whole = await File.ReadAllBytesAsync(path, TestContext.Current.CancellationToken);
        File.SetAttributes(path, FileAttributes.Normal);
        await File.WriteAllBytesAsync(path, whole.AsMemory(0, whole.Length / 2), TestContext.Current.CancellationToken);
        using BlobCursor cursor = Server.Store.OpenBlob(new ObjectId(sha));
        byte[] buffer = new byte[1024 * 1024];
        long at = 0;
        VfsException? error = null;
        try
        {
            // The pump meets the damage between reads, on the thread pool; the read that needs those bytes reports it.
            for (int n; (n = cursor.Read(at, buffer)) > 0; at += n)
            {
                Assert.Equal(content.AsSpan((int)at, n).ToArray(), buffer.AsSpan(0, n).ToArray());
                await Task.Delay(2, TestContext.Current.CancellationToken);
            }
        }
        catch (VfsException e)
        {
            error = e;
        }
        Assert.Equal(Errno.EIO, error?.Errno);
        Assert.InRange(at, 4L << 20, 7L << 20);
        // The same blob through a second cursor, and the server for others.
        using BlobCursor again = Server.Store.OpenBlob(new ObjectId(sha));
        Assert.Equal(Errno.EIO, Assert.Throws<VfsException>(() => ReadAll(again, buffer.Length)).Errno);
        string tx = await Begin(C, "master");
        await C.CreateFileAsync($"{tx}/rw", "after", "fine"u8.ToArray());
        await Commit(C, tx, "after a corrupt read");
        Assert.Equal("fine"u8.ToArray(), await C.ReadAllAsync("branch/master/ro/after"));
    }

    /// <summary>Writes a loose object file by hand: zlib of <paramref name="header"/> then <paramref name="body"/>, under a made-up name.</summary>
    private ObjectId WriteLooseByHand(string header, byte[] body)
    {
        var raw = new MemoryStream();
        using (var z = new System.IO.Compression.ZLibStream(raw, System.IO.Compression.CompressionLevel.Fastest, leaveOpen: true))
        {
            z.Write(Encoding.ASCII.GetBytes(header));
            z.Write(body);
        }
        string sha = Convert.ToHexStringLower(SHA1.HashData(Encoding.ASCII.GetBytes(header + Guid.NewGuid())));
        string dir = Path.Combine(Server.Store.GitDir, "objects", sha[..2]);
        Directory.CreateDirectory(dir);
        File.WriteAllBytes(Path.Combine(dir, sha[2..]), raw.ToArray());
        return new ObjectId(sha);
    }

    /// <summary>Reads to the end in <paramref name="chunk"/>-byte reads; returns how far it got and the error that stopped it.</summary>
    private static (long At, VfsException? Error) ReadChecked(BlobCursor cursor, byte[] content, int chunk)
    {
        byte[] buffer = new byte[chunk];
        long at = 0;
        try
        {
            for (int n; (n = cursor.Read(at, buffer)) > 0; at += n)
            {
                Assert.Equal(content.AsSpan((int)at, n).ToArray(), buffer.AsSpan(0, n).ToArray());
            }
        }
        catch (VfsException e)
        {
            return (at, e);
        }
        return (at, null);
    }

    // The zlib trailer (RFC 1950's ADLER32) is only read when something asks past the content's last byte: the cursor
    // asks, so a damaged checksum fails the read that takes the last bytes, in any read size, and no earlier one.
    [Theory]
    [InlineData(65536 - 24)]
    [InlineData(1024 * 1024)]
    [InlineData(4096)]
    public void ADamagedChecksumFailsTheLastReadWithEio(int chunk)
    {
        byte[] content = RandomBytes((2 * BlobCursor.WindowSize) + 3, 19);
        string sha = WriteWithGit(content);
        string path = Path.Combine(Server.Store.GitDir, "objects", sha[..2], sha[2..]);
        byte[] whole = File.ReadAllBytes(path);
        whole[^1] ^= 0x55;
        File.SetAttributes(path, FileAttributes.Normal);
        File.WriteAllBytes(path, whole);
        using BlobCursor cursor = Server.Store.OpenBlob(new ObjectId(sha));
        (long at, VfsException? error) = ReadChecked(cursor, content, chunk);
        Assert.Equal(Errno.EIO, error?.Errno);
        Assert.InRange(at, content.Length - chunk, content.Length - 1);
        // A read that ends before the last byte is unaffected; one that reaches it fails again.
        byte[] some = new byte[4096];
        Assert.Equal(some.Length, cursor.Read(content.Length - 100_000L, some));
        Assert.Equal(content.AsSpan(content.Length - 100_000, some.Length).ToArray(), some);
        Assert.Equal(Errno.EIO, Assert.Throws<VfsException>(() => cursor.Read(content.Length - 3L, some)).Errno);
    }

    [Fact]
    public void AnObjectLongerOrShorterThanItsHeaderIsEio()
    {
        byte[] body = RandomBytes(300_000, 23);
        using (BlobCursor longer = Server.Store.OpenBlob(WriteLooseByHand("blob 200000\0", body)))
        {
            Assert.Equal(200_000, longer.Length);
            (long at, VfsException? error) = ReadChecked(longer, body, 65536);
            Assert.Equal(Errno.EIO, error?.Errno);
            Assert.Contains("longer than its header", error!.Message, StringComparison.Ordinal);
            Assert.Equal(3 * 65536, at);
        }
        using BlobCursor shorter = Server.Store.OpenBlob(WriteLooseByHand("blob 400000\0", body));
        (long at2, VfsException? error2) = ReadChecked(shorter, body, 65536);
        Assert.Equal(Errno.EIO, error2?.Errno);
        Assert.Equal(4 * 65536, at2);
        // An intact hand-written object of the same shape reads whole: the checks above are about the damage.
        using BlobCursor exact = Server.Store.OpenBlob(WriteLooseByHand("blob 300000\0", body));
        Assert.Equal((300_000L, (VfsException?)null), ReadChecked(exact, body, 65536));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(256 * 1024)]
    [InlineData((256 * 1024) + 1)]
    [InlineData(3_000_001)]
    public void TheLooseObjectWriterMatchesGitHashObjectAndPassesFsck(int size)
    {
        byte[] content = RandomBytes(size, size + 1);
        foreach (bool sync in (bool[])[false, true])
        {
            ObjectId id = LooseObjectWriter.WriteBlob(Server.Store.GitDir, new MemoryStream(content), content.Length, sync);
            string file = Path.Combine(GitDir, "check");
            File.WriteAllBytes(file, content);
            Assert.Equal(Git("hash-object", file).Trim(), id.Sha);
            File.Delete(file);
            Assert.Equal($"{size}\n", Git("cat-file", "-s", id.Sha));
        }
        Git("fsck", "--strict");
        Assert.Empty(Directory.GetFiles(Path.Combine(Server.Store.GitDir, "objects"), "tmp_obj_*"));
    }

    [Fact]
    public void AWriteAtHalfAGibibyteStaysSparseAndCommitsTheRightBlob()
    {
        // The case: one byte at 512 MiB - 1 made the server allocate 512 MiB.
        const long Offset = (512L << 20) - 1;
        var tx = new Transaction(Server.Store, "sparse", "t", "/t");
        using Process self = Process.GetCurrentProcess();
        self.Refresh();
        long rssBefore = self.WorkingSet64;
        lock (tx.Gate)
        {
            tx.Dir([], touch: true).Children["big"] = new WorkFile(EntryKind.File, null);
            WorkFile f = tx.File(["big"], touch: true);
            f.Write(tx.Area, 1000, "head"u8);
            f.Write(tx.Area, Offset, "!"u8);
            Assert.Equal(Offset + 1, f.Length(Server.Store));
            Assert.Equal(1, tx.Area.OpenFiles);
            byte[] back = new byte[8];
            Assert.Equal(8, f.ReadAt(tx.Area, 998, back));
            Assert.Equal("\0\0head\0\0"u8.ToArray(), back);
        }
        self.Refresh();
        Assert.InRange(self.WorkingSet64 - rssBefore, long.MinValue, 64L << 20);
        ObjectId head = tx.Commit();
        tx.Dispose();
        Assert.Equal(0, tx.Area.OpenFiles);
        Assert.Equal(0, tx.Area.Budget.Used);
        Assert.Equal($"{Offset + 1}\n", Git("cat-file", "-s", "sparse:big"));
        // The expected bytes' git id, computed here without building them: zeros, "head", zeros, "!".
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
        sha.AppendData(Encoding.ASCII.GetBytes($"blob {Offset + 1}\0"));
        byte[] zeros = new byte[1 << 20];
        sha.AppendData(zeros, 0, 1000);
        sha.AppendData("head"u8);
        for (long left = Offset - 1004; left > 0; left -= zeros.Length)
        {
            sha.AppendData(zeros, 0, (int)Math.Min(left, zeros.Length));
        }
        sha.AppendData("!"u8);
        Assert.Equal(Convert.ToHexStringLower(sha.GetHashAndReset()), Git("rev-parse", "sparse:big").Trim());
        Assert.NotNull(head);
        Git("fsck", "--strict");
    }

    [Fact]
    public async Task AnEditedCopyOfALargeBlobKeepsTheRestAndSpillsNotLoads()
    {
        byte[] content = RandomBytes(3 * 1024 * 1024, 5);
        string tx = await Begin(C, "master");
        await C.CreateFileAsync($"{tx}/rw", "f", content);
        await Commit(C, tx, "one");
        tx = await Begin(C, "master", "t2");
        uint fid = await C.WalkAsync($"{tx}/rw/f");
        await C.OpenAsync(fid, P9.ORDWR);
        Assert.Equal(content.AsSpan(2_000_000, 1000).ToArray(), await C.ReadAsync(fid, 2_000_000, 1000));
        await C.WriteAsync(fid, 1_000_000, "patch"u8.ToArray());
        Assert.Equal("patch"u8.ToArray(), await C.ReadAsync(fid, 1_000_000, 5));
        await C.ClunkAsync(fid);
        await Commit(C, tx, "two");
        "patch"u8.CopyTo(content.AsSpan(1_000_000));
        Assert.Equal(content, await C.ReadAllAsync("branch/master/ro/f"));
        Git("fsck", "--strict");
    }
}

/// <summary>Byte limits per transaction, connection and server: EFBIG/ENOSPC at the limit, and service goes on.</summary>
public sealed class BlobLimitTests : DataKitTestBase
{
    private const long Tx = 1L << 20, Conn = (3L << 20) / 2, Srv = 2L << 20;

    protected override DataKitOptions Options => new() { MaxTransactionBytes = Tx, MaxConnectionBytes = Conn, MaxServerBytes = Srv };

    private static async Task<uint> OpenRw(NinePClient c, string tx, string name)
    {
        await c.CreateFileAsync($"{tx}/rw", name, Array.Empty<byte>());
        uint fid = await c.WalkAsync($"{tx}/rw/{name}");
        await c.OpenAsync(fid, P9.ORDWR);
        return fid;
    }

    [Fact]
    public async Task LimitsAnswerEfbigAndEnospcAndTheServerKeepsServing()
    {
        string t1 = await Begin(C, "master", "t1");
        uint f1 = await OpenRw(C, t1, "a");
        // One file past the transaction's limit: EFBIG, whatever the offset (even one that is negative as an i64).
        Assert.Equal(Errno.EFBIG, (await Assert.ThrowsAsync<NinePException>(() => C.WriteAsync(f1, (ulong)Tx, "x"u8.ToArray()))).Errno);
        Assert.Equal(Errno.EFBIG, (await Assert.ThrowsAsync<NinePException>(() => C.WriteAsync(f1, ulong.MaxValue - 3, "x"u8.ToArray()))).Errno);
        // Up to the limit is fine (sparse: one byte at the end), and a second file in the same transaction is over it.
        await C.WriteAsync(f1, (ulong)Tx - 1, "x"u8.ToArray());
        uint f2 = await OpenRw(C, t1, "b");
        Assert.Equal(Errno.ENOSPC, (await Assert.ThrowsAsync<NinePException>(() => C.WriteAsync(f2, 0, "y"u8.ToArray()))).Errno);
        // A second transaction on the connection: its own room, but the connection's limit stops it halfway.
        string t2 = await Begin(C, "master", "t2");
        uint g1 = await OpenRw(C, t2, "c");
        await C.WriteAsync(g1, (ulong)(Conn - Tx) - 1, "z"u8.ToArray());
        Assert.Equal(Errno.ENOSPC, (await Assert.ThrowsAsync<NinePException>(() => C.WriteAsync(g1, (ulong)(Conn - Tx), "z"u8.ToArray()))).Errno);
        // Another connection: the server's limit (2 MiB, 1.5 used) leaves it half a MiB.
        await using NinePClient other = await Connect();
        string t3 = await Begin(other, "other", "t3");
        uint h1 = await OpenRw(other, t3, "d");
        await other.WriteAsync(h1, (ulong)(Srv - Conn) - 1, "w"u8.ToArray());
        Assert.Equal(Errno.ENOSPC, (await Assert.ThrowsAsync<NinePException>(() => other.WriteAsync(h1, (ulong)(Srv - Conn), "w"u8.ToArray()))).Errno);
        // Service goes on: reads, and a commit that frees its transaction's bytes.
        await other.ClunkAsync(h1);
        string head = await Commit(other, t3, "fits");
        Assert.Equal((Srv - Conn).ToString(System.Globalization.CultureInfo.InvariantCulture) + "\n", Git("cat-file", "-s", $"{head}:d"));
        Assert.Equal(0, Server.Store.BlobSize(new ObjectId(GitStore.EmptyTree.Sha)));
        // Closing t1 gives its megabyte back to the connection: t2 can now grow.
        foreach (uint fid in (uint[])[f1, f2])
        {
            await C.ClunkAsync(fid);
        }
        await Echo(C, $"{t1}/ctl", "close");
        await C.WriteAsync(g1, (ulong)Tx - 1, "z"u8.ToArray());
        await C.ClunkAsync(g1);
        await Commit(C, t2, "after close");
        Assert.Equal($"{Tx}\n", Git("cat-file", "-s", "master:c"));
        Git("fsck", "--strict");
    }
}

/// <summary>diod's own client reads a large blob that plain git wrote, from a server that has never read it.</summary>
[Trait("Tier", "Real")]
public sealed class ColdBlobReadTests : DataKitTestBase
{
    [Fact]
    public async Task DiodcatReadsA64MiBBlobWrittenByPlainGitFromAFreshlyStartedServer()
    {
        byte[] content = new byte[64 << 20];
        new Random(64).NextBytes(content);
        string file = Path.Combine(GitDir, "big.bin");
        await File.WriteAllBytesAsync(file, content, TestContext.Current.CancellationToken);
        // Plumbing only, as a user with plain git would: hash-object, mktree, commit-tree, update-ref.
        string blob = Git("hash-object", "-w", file).Trim();
        File.Delete(file);
        ProcessResult mktree = await ProcessRunner.RunAsync("git", ["-C", GitDir, "mktree"], standardInput: $"100644 blob {blob}\tbig\n");
        string tree = mktree.EnsureSuccess().StandardOutput.Trim();
        string commit = Git("commit-tree", tree, "-m", "big from git").Trim();
        Git("update-ref", "refs/heads/master", commit);

        // A separate, freshly started server process: nothing of the blob is in its memory.
        var psi = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true, UseShellExecute = false };
        psi.Environment[ChildServer.Variable] = GitDir;
        using Process child = Process.Start(psi)!;
        try
        {
            string line = (await child.StandardOutput.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)))!;
            Assert.StartsWith("port ", line, StringComparison.Ordinal);
            string server = $"127.0.0.1:{line[5..]}";
            var watch = Stopwatch.StartNew();
            var (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync(
                "diodcat", ["-s", server, "-a", "/", "-m", "1048576", "branch/master/ro/big"], TimeSpan.FromSeconds(120));
            watch.Stop();
            Assert.True(code == 0, stderr);
            Assert.Equal(content.Length, stdout.Length);
            Assert.True(content.AsSpan().SequenceEqual(stdout), "diodcat's bytes differ from the blob");
            TestContext.Current.SendDiagnosticMessage($"cold 64 MiB read: {watch.ElapsedMilliseconds} ms");
            // The server streamed: its peak RSS stays well under the blob's size plus the runtime's own.
            long peakKiB = PeakRssKiB(child.Id);
            Assert.InRange(peakKiB, 1, 60 * 1024);
        }
        finally
        {
            child.Kill();
            await child.WaitForExitAsync(TestContext.Current.CancellationToken);
        }
    }

    /// <summary>VmHWM of /proc/PID/status: the process's peak resident set, in KiB.</summary>
    internal static long PeakRssKiB(int pid)
    {
        foreach (string l in File.ReadLines($"/proc/{pid}/status"))
        {
            if (l.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                return long.Parse(l["VmHWM:".Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        return -1;
    }
}
