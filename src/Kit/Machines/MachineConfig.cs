using System.Globalization;
using Kit.Cli.Commands;
using Kit.Cli.Vm;
using Kit.VpnKit;

namespace Kit.Cli.Machines;

/// <summary>One shared host directory: <c>--mount DIR[:ro]</c>, at the same path in the guest.</summary>
internal sealed record MachineMount(string Path, bool ReadOnly)
{
    public static MachineMount Parse(string text)
    {
        bool ro = text.EndsWith(":ro", StringComparison.Ordinal);
        string path = ro ? text[..^3] : text.EndsWith(":rw", StringComparison.Ordinal) ? text[..^3] : text;
        if (path.Length == 0 || !System.IO.Path.IsPathFullyQualified(System.IO.Path.GetFullPath(path)))
        {
            throw new CliException($"--mount wants DIR[:ro], got \"{text}\"");
        }
        string full = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(path));
        if (!Directory.Exists(full))
        {
            throw new CliException($"--mount {text}: {full} is not a directory");
        }
        if (full == "/" || full.Contains('\n') || full.Contains(' '))
        {
            throw new CliException($"--mount {text}: {full} cannot be shared (the root, or a name with a space or newline)");
        }
        return new MachineMount(full, ro);
    }

    /// <summary>The line kept in DataKit (config/mounts): "PATH ro|rw".</summary>
    public string Line => $"{Path} {(ReadOnly ? "ro" : "rw")}";

    public static MachineMount? FromLine(string line)
    {
        string[] parts = line.Split(' ');
        return parts.Length == 2 && parts[0].StartsWith('/') && parts[1] is "ro" or "rw" ? new MachineMount(parts[0], parts[1] == "ro") : null;
    }
}

/// <summary>
/// What a machine is: its resources, shares and static port forwards. Kept in DataKit on the machine's branch under
/// <c>config/</c>, one small file per setting (cpus, memory, disk-size, accel, docker, mounts, ports), so a user can read
/// and change it with any 9P client or git; <c>kit up</c> writes what its flags say, the daemon reads it at start, and
/// <c>config/ports</c> is also applied live while the machine runs.
/// </summary>
internal sealed record MachineConfig
{
    public int Cpus { get; init; } = 2;

    public ulong MemoryBytes { get; init; } = 2UL << 30;

    public ulong DiskBytes { get; init; } = 8UL << 30;

    public Accelerator Accel { get; init; } = Accelerator.Auto;

    public bool Docker { get; init; }

    public IReadOnlyList<MachineMount> Mounts { get; init; } = [];

    /// <summary>The inspector's address (<c>--ui tcp://127.0.0.1:PORT</c>, config/ui), or null: no inspector.</summary>
    public System.Net.IPEndPoint? Ui { get; init; }

    /// <summary>Forwards that stay whether or not anything in the guest listens (HOSTPORT:GUESTPORT[/udp]).</summary>
    public IReadOnlyList<PortPublish> Ports { get; init; } = [];

    public static MachineConfig Read(BranchFiles files)
    {
        var config = new MachineConfig();
        if (files.Read("config/cpus") is { } cpus && int.TryParse(cpus.Trim(), CultureInfo.InvariantCulture, out int c) && c is > 0 and <= 64)
        {
            config = config with { Cpus = c };
        }
        if (files.Read("config/memory") is { } memory && VmCommand.TryParseSize(memory.Trim(), out ulong m) && m >= 256UL << 20)
        {
            config = config with { MemoryBytes = m };
        }
        if (files.Read("config/disk-size") is { } disk && VmCommand.TryParseSize(disk.Trim(), out ulong d) && d > 0)
        {
            config = config with { DiskBytes = d };
        }
        if (files.Read("config/accel") is { } accel && accel.Trim() is "auto" or "kvm" or "tcg")
        {
            config = config with { Accel = Accelerators.Parse(accel.Trim()) };
        }
        if (files.Read("config/docker") is { } docker)
        {
            config = config with { Docker = docker.Trim() == "true" };
        }
        if (files.Read("config/ui") is { } ui && ui.Trim() is { Length: > 0 } address)
        {
            // Loopback only, as the flag: a config/ui edited by hand to a public address is not served.
            try
            {
                config = config with { Ui = GatewaySettings.ParseUi(address, anyAddress: false) };
            }
            catch (CliException)
            {
            }
        }
        if (files.Read("config/mounts") is { } mounts)
        {
            config = config with { Mounts = [.. Lines(mounts).Select(MachineMount.FromLine).OfType<MachineMount>()] };
        }
        return config with { Ports = ReadPorts(files.Read("config/ports"), out _) };
    }

    /// <summary>config/ports: one HOSTPORT:GUESTPORT[/udp] per line; '#' starts a comment. Bad lines are reported, not fatal.</summary>
    public static IReadOnlyList<PortPublish> ReadPorts(string? text, out List<string> problems)
    {
        problems = [];
        var ports = new List<PortPublish>();
        foreach (string line in Lines(text ?? ""))
        {
            try
            {
                ports.Add(PortPublish.Parse(line));
            }
            catch (FormatException e)
            {
                problems.Add($"config/ports: \"{line}\": {e.Message}");
            }
        }
        return ports;
    }

    private static IEnumerable<string> Lines(string text) =>
        text.Split('\n').Select(l => (l.Contains('#') ? l[..l.IndexOf('#')] : l).Trim()).Where(l => l.Length > 0);

    /// <summary>The files <see cref="Read"/> reads, as this configuration says.</summary>
    public Dictionary<string, string?> Files() => new()
    {
        ["config/cpus"] = Cpus.ToString(CultureInfo.InvariantCulture) + "\n",
        ["config/memory"] = $"{MemoryBytes >> 20}M\n",
        ["config/disk-size"] = $"{DiskBytes >> 20}M\n",
        ["config/accel"] = Accel.ToString().ToLowerInvariant() + "\n",
        ["config/docker"] = Docker ? "true\n" : "false\n",
        ["config/mounts"] = string.Concat(Mounts.Select(m => m.Line + "\n")),
        ["config/ui"] = Ui is null ? "" : $"tcp://{Ui}\n",
    };
}
