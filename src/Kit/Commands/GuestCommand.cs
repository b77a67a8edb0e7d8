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
            HelpName = "DIR",
            Description = "Cache directory (default: $KIT_GUEST_CACHE, else ~/.cache/kit/guest).",
        };
        var build = new Command("build", "Build (or reuse from cache) the default guest kernel and initramfs; prints their paths.")
        {
            cacheOption,
        };
        build.SetAction(parse =>
        {
            (string kernel, string initrd) = Ensure(parse.GetValue(cacheOption));
            Console.WriteLine($"kernel={kernel}");
            Console.WriteLine($"initrd={initrd}");
            return 0;
        });
        return new Command("guest", "The default guest: a stock Debian kernel with a busybox initramfs.") { build };
    }

    /// <summary>
    /// Builds the default guest or finds it in the cache; returns the kernel and initramfs paths. The script's
    /// progress goes to stderr; its result lines (kernel=..., initrd=...) are parsed here. The embedded script is
    /// handed to bash as its -c argument, never written to a file: a file in a shared directory under a predictable
    /// name is a place where another local user can plant a FIFO or symlink and feed root's bash their own commands.
    /// </summary>
    public static (string Kernel, string Initrd) Ensure(DirectoryInfo? cache)
    {
        string script;
        using (Stream resource = Assembly.GetExecutingAssembly().GetManifestResourceStream("guest/build.sh")
            ?? throw new CliException("guest/build.sh is not embedded in this build"))
        using (var reader = new StreamReader(resource))
        {
            script = reader.ReadToEnd();
        }
        // bash -c SCRIPT NAME: NAME becomes $0, which the script's messages and BASH_SOURCE use.
        var start = new ProcessStartInfo("bash") { UseShellExecute = false, RedirectStandardOutput = true };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(script);
        start.ArgumentList.Add("guest/build.sh");
        if (cache is not null)
        {
            start.Environment["KIT_GUEST_CACHE"] = cache.FullName;
        }
        using Process process = Process.Start(start) ?? throw new CliException("cannot start bash");
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        string? kernel = null, initrd = null;
        foreach (string line in output.Split('\n', StringSplitOptions.TrimEntries))
        {
            if (line.StartsWith("kernel=", StringComparison.Ordinal))
            {
                kernel = line[7..];
            }
            else if (line.StartsWith("initrd=", StringComparison.Ordinal))
            {
                initrd = line[7..];
            }
        }
        if (process.ExitCode != 0 || kernel is null || initrd is null)
        {
            throw new CliException($"building the default guest failed (guest/build.sh exit code {process.ExitCode})");
        }
        return (kernel, initrd);
    }
}
