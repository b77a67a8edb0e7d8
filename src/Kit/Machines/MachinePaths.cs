using System.Text.RegularExpressions;
using Kit.Cli.Commands;

namespace Kit.Cli.Machines;

/// <summary>
/// Where a machine's files live (design.md, "Runtime state"): runtime sockets and the daemon's pid under
/// <c>$XDG_RUNTIME_DIR/kit/NAME</c> (as root without it, <c>/run/kit/NAME</c>; otherwise under the data directory), disk
/// and logs under <c>~/.local/share/kit/machines/NAME</c>. Every directory is 0700, also when it already existed: the
/// sockets in it (control, vsock, docker, DataKit) each give whoever can open them the guest's root, so only the
/// directory's owner may reach them. Never a predictable name in /tmp, where another user could create it first.
/// </summary>
internal sealed partial class MachinePaths
{
    private const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    private MachinePaths(string name, string runtime, string data)
    {
        Name = name;
        Runtime = runtime;
        Data = data;
    }

    public string Name { get; }

    /// <summary>Sockets and the pid file: gone with the daemon (or the host's reboot, under $XDG_RUNTIME_DIR).</summary>
    public string Runtime { get; }

    /// <summary>The disk, the log and the lock: kept until <c>kit rm</c>.</summary>
    public string Data { get; }

    public string Disk => Path.Combine(Data, "disk.img");

    /// <summary>The daemon's own lines and the guest's serial console, in order.</summary>
    public string Log => Path.Combine(Data, "machine.log");

    /// <summary>Held (flock) by the daemon while it runs and by <c>kit up</c>/<c>kit rm</c> while they decide.</summary>
    public string Lock => Path.Combine(Data, "lock");

    public string Pid => Path.Combine(Runtime, "pid");

    public string Control => Path.Combine(Runtime, "control.sock");

    public string Vsock => Path.Combine(Runtime, "vsock.sock");

    public string Docker => Path.Combine(Runtime, "docker.sock");

    public string DataKit => Path.Combine(Runtime, "datakit.sock");

    /// <summary>The DataKit branch holding this machine's configuration and state.</summary>
    public string Branch => "machine-" + Name;

    /// <summary>Machine names: what a host name, a git branch and a directory all accept.</summary>
    public static bool IsValidName(string name) => NameRule().IsMatch(name);

    [GeneratedRegex("^[a-z0-9][a-z0-9-]{0,30}$")]
    private static partial Regex NameRule();

    public static MachinePaths For(string name)
    {
        if (!IsValidName(name))
        {
            throw new CliException($"machine name \"{name}\": use 1-31 lowercase letters, digits and '-', starting with a letter or digit");
        }
        return new MachinePaths(name, Path.Combine(RuntimeRoot(), name), Path.Combine(DataRoot(), name));
    }

    /// <summary>The machines that have a data directory (created by <c>kit up</c>, removed by <c>kit rm</c>).</summary>
    public static IEnumerable<string> All()
    {
        string root = DataRoot();
        if (!Directory.Exists(root))
        {
            yield break;
        }
        foreach (string dir in Directory.EnumerateDirectories(root).Order(StringComparer.Ordinal))
        {
            string name = Path.GetFileName(dir);
            if (IsValidName(name))
            {
                yield return name;
            }
        }
    }

    public static string DataRoot() => Path.Combine(Path.GetDirectoryName(DataCommand.DefaultStore())!, "machines");

    private static string RuntimeRoot()
    {
        string? xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        if (!string.IsNullOrEmpty(xdg))
        {
            return Path.Combine(xdg, "kit");
        }
        return Environment.UserName == "root" ? "/run/kit" : Path.Combine(DataRoot(), ".run");
    }

    /// <summary>Creates (or re-protects) the runtime and data directories, 0700.</summary>
    public void Create()
    {
        foreach (string dir in (string[])[Path.GetDirectoryName(Runtime)!, Runtime, DataRoot(), Data])
        {
            Directory.CreateDirectory(dir, Private);
            File.SetUnixFileMode(dir, Private);
        }
    }
}
