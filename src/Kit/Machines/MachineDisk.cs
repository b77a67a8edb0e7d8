using System.Diagnostics;
using System.Security.Cryptography;

namespace Kit.Cli.Machines;

/// <summary>
/// A machine's own disk: a copy of the cached image (<see cref="MachineImage"/>), grown to the machine's size. Both
/// operations need the machine stopped: e2fsck and resize2fs work on the image file, not through the guest.
/// </summary>
internal static class MachineDisk
{
    /// <summary>
    /// Copies <paramref name="baseImage"/> to <paramref name="diskPath"/> and grows it to <paramref name="sizeBytes"/>.
    /// The copy shares blocks with the base where the filesystem can (reflink) and stays sparse elsewhere; it is made
    /// under a temporary name in the same directory and renamed into place, so a disk at <paramref name="diskPath"/> is
    /// always whole. An existing disk is never overwritten, and a size below the image's is refused (ext4 images are
    /// only ever grown).
    /// </summary>
    public static void Create(string baseImage, string diskPath, ulong sizeBytes)
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new CliException("machine disks are made with Linux tools (cp --reflink, e2fsck, resize2fs)");
        }
        string source = Path.GetFullPath(baseImage);
        string target = Path.GetFullPath(diskPath);
        if (!File.Exists(source))
        {
            throw new CliException($"machine image {source} does not exist");
        }
        if (File.Exists(target) || Directory.Exists(target))
        {
            throw new CliException($"disk {target} already exists");
        }
        ulong baseSize = (ulong)new FileInfo(source).Length;
        if (sizeBytes < baseSize)
        {
            throw new CliException($"disk size {Format(sizeBytes)} is smaller than the machine image ({Format(baseSize)}); use at least {Format(baseSize)}");
        }
        string directory = Path.GetDirectoryName(target) ?? throw new CliException($"disk {target} has no directory");
        // Machine state is private to its user: created 0700 when missing (an existing directory keeps its mode).
        Directory.CreateDirectory(directory, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        // A random name nobody can predict, beside the target so the rename stays within one filesystem.
        string temp = Path.Combine(directory, $".{Path.GetFileName(target)}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}.tmp");
        try
        {
            Run("cp", "--reflink=auto", "--sparse=always", "--", source, temp);
            File.SetUnixFileMode(temp, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            Resize(temp, baseSize, sizeBytes);
            // rename(2) without replacing: another creator of the same disk loses cleanly instead of overwriting.
            File.Move(temp, target, overwrite: false);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
    }

    /// <summary>Grows a stopped machine's disk to <paramref name="sizeBytes"/> (kit up --disk-size); never shrinks.</summary>
    public static void Grow(string diskPath, ulong sizeBytes)
    {
        string path = Path.GetFullPath(diskPath);
        if (!File.Exists(path))
        {
            throw new CliException($"disk {path} does not exist");
        }
        ulong current = (ulong)new FileInfo(path).Length;
        if (sizeBytes < current)
        {
            throw new CliException($"disk size {Format(sizeBytes)} is smaller than the disk ({Format(current)}); disks are never shrunk");
        }
        Resize(path, current, sizeBytes);
    }

    private static void Resize(string path, ulong from, ulong to)
    {
        if (to == from)
        {
            return;
        }
        // Extending the file leaves a hole (sparse); resize2fs then grows the filesystem into it, adding block groups
        // and inodes in proportion. It refuses a filesystem not checked since it was last mounted, hence e2fsck -f
        // first; -p repairs only what is safe to repair unattended and fails (exit 4) on anything else.
        using (var file = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.None))
        {
            file.SetLength(checked((long)to));
        }
        Run(allowed: [0, 1], "e2fsck", "-f", "-p", path);
        Run("resize2fs", path);
    }

    private static int Run(string tool, params string[] arguments) => Run([0], tool, arguments);

    /// <summary>Runs a tool to completion; a failure becomes one line naming the tool and its last words.</summary>
    private static int Run(int[] allowed, string tool, params string[] arguments)
    {
        var start = new ProcessStartInfo(tool) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new CliException($"cannot start {tool}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CliException($"cannot run {tool} ({e.Message}); it comes with coreutils / e2fsprogs");
        }
        using (process)
        {
            Task<string> stdout = process.StandardOutput.ReadToEndAsync();
            string stderr = process.StandardError.ReadToEnd();
            string output = stdout.GetAwaiter().GetResult();
            process.WaitForExit();
            if (Array.IndexOf(allowed, process.ExitCode) < 0)
            {
                string said = (stderr.Length > 0 ? stderr : output).Trim().ReplaceLineEndings(" ");
                throw new CliException($"{tool} {string.Join(' ', arguments)} failed (exit code {process.ExitCode}): {(said.Length > 400 ? said[^400..] : said)}");
            }
            return process.ExitCode;
        }
    }

    internal static string Format(ulong bytes) => bytes >= 1UL << 30 && bytes % (1UL << 30) == 0
        ? $"{bytes >> 30}G"
        : $"{bytes / 1048576.0:0.#}M";
}
