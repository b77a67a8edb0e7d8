using Kit.Cli.Commands;

namespace Kit.Cli.Machines;

/// <summary>The parts a machine boots from: its root filesystem image (ext4) and the default guest's kernel and initramfs.</summary>
internal sealed record ImagePaths(string Image, string Kernel, string Initrd);

/// <summary>
/// The machine image (`kit up`, `kit image build`): Debian 12 minbase on ext4 with busybox init, built by guest/image.sh
/// (embedded like guest/build.sh, run through bash -c) and cached under $KIT_IMAGE_CACHE, else
/// ~/.local/share/kit/images, in a directory whose name hashes the script, the agent binary, the variant and the kernel
/// version. A machine never boots the cached image itself: <see cref="MachineDisk.Create"/> gives it a copy.
/// Boot it with kit.root=/dev/vda on the kernel command line (docs/machines.md).
/// </summary>
internal static class MachineImage
{
    /// <summary>
    /// Builds the image (or finds it in the cache). <paramref name="agentPath"/> is installed as
    /// /usr/local/bin/kit-agent; null builds an image without an agent (init keeps an idle placeholder).
    /// Needs root (mmdebstrap --mode=root); the script says so in one line otherwise.
    /// </summary>
    public static ImagePaths Ensure(bool docker, string? agentPath)
    {
        List<string> arguments = [];
        if (agentPath is not null)
        {
            string agent = Path.GetFullPath(agentPath);
            if (!File.Exists(agent))
            {
                throw new CliException($"--agent {agentPath}: no such file");
            }
            arguments.AddRange(["--agent", agent]);
        }
        if (docker)
        {
            arguments.Add("--docker");
        }
        // The kernel and initramfs are the default guest's: the image only adds a root filesystem and the modules of
        // that kernel, so the two caches are built in turn (the script reads the kernel version from the bzImage).
        (int exitCode, string output) = (0, "");
        for (int attempt = 0; attempt < 2; attempt++)
        {
            (string kernel, string initrd) = GuestCommand.Ensure(null);
            (exitCode, output) = GuestCommand.RunScript("guest/image.sh", [.. arguments, "--kernel", kernel, "--initrd", initrd],
                new Dictionary<string, string>(), "image", "machine image");
            // 3: the guest cache was rebuilt by another guest/build.sh (an older kit, another checkout) between the two
            // scripts, and its initramfs cannot mount a machine's root; this kit's build.sh puts its own back.
            if (exitCode != 3)
            {
                break;
            }
        }
        string? image = null, builtKernel = null, builtInitrd = null;
        foreach (string line in output.Split('\n', StringSplitOptions.TrimEntries))
        {
            if (line.StartsWith("image=", StringComparison.Ordinal))
            {
                image = line[6..];
            }
            else if (line.StartsWith("kernel=", StringComparison.Ordinal))
            {
                builtKernel = line[7..];
            }
            else if (line.StartsWith("initrd=", StringComparison.Ordinal))
            {
                builtInitrd = line[7..];
            }
        }
        if (exitCode != 0 || image is null || builtKernel is null || builtInitrd is null)
        {
            throw new CliException($"building the machine image failed (guest/image.sh exit code {exitCode})");
        }
        return new ImagePaths(image, builtKernel, builtInitrd);
    }

    /// <summary>The paths as one JSON object (Utf8JsonWriter: no reflection, NativeAOT-safe).</summary>
    internal static string Json(ImagePaths paths)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("image", paths.Image);
            w.WriteString("kernel", paths.Kernel);
            w.WriteString("initrd", paths.Initrd);
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan);
    }
}
