using Kit.Linux;

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
        file.Write(CpioArchive.BuildGzip([new CpioArchive.Entry("kit/kit-agent", File.ReadAllBytes(agent))]));
    }
}
