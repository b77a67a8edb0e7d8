using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// Writes a blob as a loose object while reading its content once, in fixed-size chunks: memory does not grow with
/// the blob. gitformat-loose: the object id is SHA-1 over "blob SIZE\0" + content, and the file at
/// objects/xx/rest (xx the first two hex digits) is the zlib deflate of those same bytes.
/// </summary>
/// <remarks>
/// The object is deflated into a temporary file in objects/ and renamed into place, as git does
/// (object-file.c, write_loose_object), so a reader never sees a half-written object and a crash leaves only a
/// tmp_obj_ file that git gc removes. libgit2's ObjectDatabase.CreateBlob also streams, but it cannot fsync.
/// </remarks>
public static class LooseObjectWriter
{
    private const int ChunkSize = 256 * 1024;

    /// <summary>
    /// Writes <paramref name="length"/> bytes from <paramref name="content"/> as a blob; returns its id.
    /// </summary>
    /// <param name="sync">
    /// fsync the object file before the rename and the objects/xx directory after it, so that once this returns the
    /// object survives power loss (the durable-commit order: objects, then the ref that names them).
    /// </param>
    /// <exception cref="IOException">The content ended before <paramref name="length"/> bytes.</exception>
    public static ObjectId WriteBlob(string gitDir, Stream content, long length, bool sync)
    {
        string objects = Path.Combine(gitDir, "objects");
        // A random name in the store's own objects/ (git's tmp_obj_XXXXXX): private to this store, never predictable.
        string tmp = Path.Combine(objects, "tmp_obj_" + Convert.ToHexString(RandomNumberGenerator.GetBytes(8)));
        byte[] id;
        try
        {
            var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write, BufferSize = ChunkSize };
            if (!OperatingSystem.IsWindows())
            {
                // git's loose objects are read-only (0444, before the umask).
                options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead;
            }
            using (var file = new FileStream(tmp, options))
            {
                using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA1);
                using (var z = new ZLibStream(file, CompressionLevel.Fastest, leaveOpen: true))
                {
                    byte[] header = Encoding.ASCII.GetBytes($"blob {length}\0");
                    hash.AppendData(header);
                    z.Write(header);
                    byte[] chunk = new byte[(int)Math.Min(ChunkSize, Math.Max(length, 1))];
                    long left = length;
                    while (left > 0)
                    {
                        int n = content.Read(chunk, 0, (int)Math.Min(chunk.Length, left));
                        if (n == 0)
                        {
                            throw new IOException($"content ended {left} bytes short of {length}");
                        }
                        hash.AppendData(chunk, 0, n);
                        z.Write(chunk, 0, n);
                        left -= n;
                    }
                }
                id = hash.GetHashAndReset();
                if (sync)
                {
                    file.Flush(flushToDisk: true);
                }
            }
            var oid = new ObjectId(id);
            string dir = Path.Combine(objects, oid.Sha[..2]);
            Directory.CreateDirectory(dir);
            string final = Path.Combine(dir, oid.Sha[2..]);
            if (File.Exists(final))
            {
                // Same id, same content: the existing object stands (git's "freshen" case).
                File.Delete(tmp);
            }
            else
            {
                File.Move(tmp, final);
                if (sync)
                {
                    SyncDirectory(dir);
                    SyncDirectory(objects); // the objects/xx entry itself may be new
                }
            }
            return oid;
        }
        catch
        {
            File.Delete(tmp);
            throw;
        }
    }

    private static void SyncDirectory(string dir)
    {
        if (!OperatingSystem.IsWindows())
        {
            Kit.Linux.Sys.FsyncDirectory(dir);
        }
    }
}
