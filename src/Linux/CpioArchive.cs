using System.IO.Compression;
using System.Text;

namespace Kit.Linux;

/// <summary>
/// Writes a gzip-compressed "newc" cpio archive, the initramfs format (Linux
/// Documentation/driver-api/early-userspace/buffer-format.rst). Linux unpacks concatenated archives in order, so
/// appending one of these to an initrd.gz adds or replaces files: a machine's agent (kit's AgentInitrd), a test guest's
/// /kit/run script.
/// </summary>
public static class CpioArchive
{
    private const int RegularFile = 0x8000; // S_IFREG
    private const int Directory = 0x4000;   // S_IFDIR

    /// <summary>One file: a path relative to the guest's root ("kit/run"), its bytes and permission bits.</summary>
    public sealed record Entry(string Path, byte[] Data, int Mode = 0x1ED /* 0755 */);

    /// <summary>The gzip'd archive with the files and every parent directory they need.</summary>
    public static byte[] BuildGzip(IEnumerable<Entry> files)
    {
        using var buffer = new MemoryStream();
        using (var gzip = new GZipStream(buffer, CompressionLevel.Fastest, leaveOpen: true))
        {
            var dirs = new HashSet<string>(StringComparer.Ordinal);
            int inode = 1;
            foreach (Entry file in files)
            {
                string path = file.Path.TrimStart('/');
                string[] parts = path.Split('/');
                for (int i = 1; i < parts.Length; i++)
                {
                    string dir = string.Join('/', parts[..i]);
                    if (dirs.Add(dir))
                    {
                        WriteEntry(gzip, dir, Directory | 0x1ED, [], inode++);
                    }
                }
                WriteEntry(gzip, path, RegularFile | (file.Mode & 0xFFF), file.Data, inode++);
            }
            WriteEntry(gzip, "TRAILER!!!", 0, [], 0);
        }
        return buffer.ToArray();
    }

    private static void WriteEntry(Stream output, string name, int mode, byte[] data, int inode)
    {
        byte[] nameBytes = Encoding.UTF8.GetBytes(name + "\0");
        // 110-byte header: magic then 13 eight-digit hex fields.
        var header = new StringBuilder("070701");
        foreach (int field in (int[])[inode, mode, 0, 0, 1, 0, data.Length, 0, 0, 0, 0, nameBytes.Length, 0])
        {
            header.Append(field.ToString("X8", System.Globalization.CultureInfo.InvariantCulture));
        }
        output.Write(Encoding.ASCII.GetBytes(header.ToString()));
        output.Write(nameBytes);
        Pad(output, 110 + nameBytes.Length);
        output.Write(data);
        Pad(output, data.Length);
    }

    private static void Pad(Stream output, int length)
    {
        // Header+name and data each end on a 4-byte boundary.
        int pad = (4 - (length % 4)) % 4;
        for (int i = 0; i < pad; i++)
        {
            output.WriteByte(0);
        }
    }
}
