using System.CommandLine;
using Kit.Cli.Machines;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit image build`: builds (or finds in the cache) the machine image that `kit up` copies for each machine: Debian 12
/// on ext4 with busybox init and the guest agent, plus the default guest's kernel and initramfs (guest/image.sh).
/// </summary>
internal static class ImageCommand
{
    public static Command Create()
    {
        var docker = new Option<bool>("--docker") { Description = "The variant with Debian's docker.io (dockerd starts with kit.docker=1)." };
        var agent = new Option<FileInfo?>("--agent")
        {
            HelpName = "PATH",
            Description = "The guest agent binary, installed as /usr/local/bin/kit-agent (default: none; init keeps a placeholder).",
        };
        var json = new Option<bool>("--json") { Description = "Print {\"image\": PATH, \"kernel\": PATH, \"initrd\": PATH} instead of image=, kernel= and initrd= lines." };
        var build = new Command("build", "Build (or reuse from cache) the machine image; prints the paths of the ext4 image, kernel and initramfs. Needs root.")
        {
            docker, agent, json,
        };
        build.SetAction(parse =>
        {
            ImagePaths paths = MachineImage.Ensure(parse.GetValue(docker), parse.GetValue(agent)?.FullName);
            Console.WriteLine(parse.GetValue(json) ? MachineImage.Json(paths) : $"image={paths.Image}\nkernel={paths.Kernel}\ninitrd={paths.Initrd}");
            return 0;
        });
        return new Command("image", "The machine image: Debian 12 on ext4 with busybox init, booted with kit.root=/dev/vda.") { build };
    }
}
