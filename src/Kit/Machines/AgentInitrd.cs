using System.Globalization;
using System.IO.Compression;
using System.Text;

namespace Kit.Cli.Machines;

/// <summary>
/// The initramfs a machine boots with: the image's own, followed by a second gzip'd cpio archive holding this kit's guest
/// agent as <c>/kit/kit-agent</c> (Linux unpacks concatenated archives in order; the initramfs copies the agent into the
/// machine's /run/kit). The agent thus always speaks the protocol of the kit that booted the machine, whatever version
/// made its disk, and a new agent needs no new image.
/// </summary>
internal static class AgentInitrd
{
    /// <summary>Writes <paramref name="output"/> (0600, a fresh file) from the base initramfs and the agent.</summary>
    public static void Write(string baseInitrd, string agent, string output)
    {
        using var file = new FileStream(output, new FileStreamOptions
        {
            Mode = FileMode.Create,
            Access = FileAccess.Write,
            UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite,
        });
        using (FileStream source = File.OpenRead(baseInitrd))
        {
            source.CopyTo(file);
        }
        using var gzip = new GZipStream(file, CompressionLevel.Fastest);
        Entry(gzip, "kit", 0x41ED /* dir 0755 */, []);
        Entry(gzip, "kit/kit-agent", 0x81ED /* file 0755 */, File.ReadAllBytes(agent));
        Entry(gzip, "TRAILER!!!", 0, []);
    }

    /// <summary>One entry in the "newc" format (cpio(5), "New ASCII Format"): header, name, data, each padded to 4 bytes.</summary>
    private static void Entry(Stream output, string name, int mode, byte[] data)
    {
        byte[] nameBytes = Encoding.ASCII.GetBytes(name + "\0");
        var header = new StringBuilder("070701");
        foreach (long field in (long[])[0, mode, 0, 0, 1, 0, data.Length, 0, 0, 0, 0, nameBytes.Length, 0])
        {
            header.Append(field.ToString("X8", CultureInfo.InvariantCulture));
        }
        output.Write(Encoding.ASCII.GetBytes(header.ToString()));
        output.Write(nameBytes);
        Pad(output, 110 + nameBytes.Length);
        output.Write(data);
        Pad(output, data.Length);
    }

    private static void Pad(Stream output, int length)
    {
        int pad = (4 - (length % 4)) % 4;
        output.Write(new byte[pad]);
    }
}
