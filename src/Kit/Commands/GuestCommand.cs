using System.CommandLine;
using System.Diagnostics;
using System.Reflection;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit guest build`: builds the default guest (stock Debian kernel + busybox initramfs) from Debian packages,
/// cached by kernel version. The work is done by guest/build.sh, embedded in this assembly so the command
/// works from the published CLI alone.
/// </summary>
internal static class GuestCommand
{
    public static Command Create()
    {
        var cacheOption = new Option<DirectoryInfo?>("--cache")
        {
            Description = "Cache directory (default: $KIT_GUEST_CACHE, else ~/.cache/kit/guest).",
        };
        var build = new Command("build", "Build (or reuse from cache) the default guest kernel and initramfs; prints their paths.")
        {
            cacheOption,
        };
        build.SetAction(parse => Build(parse.GetValue(cacheOption)));
        return new Command("guest", "The default guest: a stock Debian kernel with a busybox initramfs.") { build };
    }

    private static int Build(DirectoryInfo? cache)
    {
        string script = Path.Combine(Path.GetTempPath(), $"kit-guest-build-{Environment.ProcessId}.sh");
        using (Stream resource = Assembly.GetExecutingAssembly().GetManifestResourceStream("guest/build.sh")
            ?? throw new CliException("guest/build.sh is not embedded in this build"))
        using (FileStream file = File.Create(script))
        {
            resource.CopyTo(file);
        }
        try
        {
            var start = new ProcessStartInfo("bash") { UseShellExecute = false };
            start.ArgumentList.Add(script);
            if (cache is not null)
            {
                start.Environment["KIT_GUEST_CACHE"] = cache.FullName;
            }
            using Process process = Process.Start(start) ?? throw new CliException("cannot start bash");
            process.WaitForExit();
            return process.ExitCode;
        }
        finally
        {
            File.Delete(script);
        }
    }
}
