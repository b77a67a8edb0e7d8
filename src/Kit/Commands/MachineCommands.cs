using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Kit.Cli.Machines;
using Kit.Cli.Vm;
using Kit.DataKit.Store;
using Kit.VpnKit;

namespace Kit.Cli.Commands;

/// <summary>
/// The machine commands (design.md, "Machines"): <c>kit up</c> creates or starts a machine in the background and returns
/// once its agent answers; <c>kit status</c>, <c>kit down</c>, <c>kit rm</c>; <c>kit exec</c> and <c>kit shell</c> live in
/// <see cref="ExecCommand"/>. The hidden <c>kit machine-daemon NAME</c> is the background process itself
/// (<see cref="MachineDaemon"/>).
/// </summary>
internal static class MachineCommands
{
    public const string DefaultName = "default";

    public static IEnumerable<Command> Create() => [Up(), Status(), Down(), Remove(), Daemon()];

    private static Argument<string> NameArgument() => new("name")
    {
        Arity = ArgumentArity.ZeroOrOne,
        Description = "The machine (default: \"default\").",
        DefaultValueFactory = _ => DefaultName,
    };

    private static Command Up()
    {
        var name = NameArgument();
        var accel = new Option<string?>("--accel") { HelpName = "auto|kvm|tcg", Description = Accelerators.OptionHelp };
        var cpus = new Option<int?>("--cpus", "-c") { HelpName = "N", Description = "vCPUs (default 2)." };
        var memory = new Option<string?>("--memory", "-m") { HelpName = "SIZE", Description = "Guest RAM, e.g. 2G (default 2G)." };
        var disk = new Option<string?>("--disk-size") { HelpName = "SIZE", Description = "Grow the machine's disk to SIZE (default 8G; never shrinks)." };
        var mounts = new Option<string[]>("--mount") { HelpName = "DIR[:ro]", Description = "Share a host directory at the same path in the guest (repeatable; replaces the machine's list)." };
        var docker = new Option<bool?>("--docker") { Description = "Put Debian's docker.io in the machine; its socket is forwarded to the host (kit status shows where)." };
        var dns = new Option<string[]>("--dns-upstream") { HelpName = "IP:PORT", Description = "DNS upstream for the guest's forwarder (repeatable; default: the host's resolv.conf)." };
        var ui = new Option<string?>("--ui") { HelpName = "tcp://127.0.0.1:PORT|none", Description = "Serve the inspector (flows, DNS, HTTP, pcap) of the machine's VPNKit on loopback; kept for later starts (none: stop serving it)." };
        var policy = new Option<string?>("--policy") { HelpName = "FILE|none", Description = "Policy rules for the machine's traffic (JSON, as kit net run --policy); kept on the host, out of the guest's reach, for later starts (none: no rules)." };
        var httpProxy = new Option<string?>("--http-proxy") { HelpName = "http://HOST:PORT|none", Description = "Send the guest's HTTP through this proxy (as kit net run); kept for later starts. Credentials are not kept: use --proxy-from-env." };
        var httpsProxy = new Option<string?>("--https-proxy") { HelpName = "http://HOST:PORT|none", Description = "Tunnel the guest's port 443 through this proxy with CONNECT; kept for later starts." };
        var noProxy = new Option<string?>("--no-proxy") { HelpName = "LIST|none", Description = "Destinations that go direct (curl's NO_PROXY); kept for later starts." };
        var proxyFromEnv = new Option<bool?>("--proxy-from-env") { Description = "Take the proxies (with credentials) from http_proxy, https_proxy and no_proxy of the kit up that starts the machine; kept for later starts." };
        var timeout = new Option<int>("--timeout") { HelpName = "SECONDS", Description = "How long to wait for the guest agent.", DefaultValueFactory = _ => 900 };
        var up = new Command("up", "Create or start a machine in the background (Debian 12 with VPNKit networking, DataKit at /datakit); returns when its agent answers.")
        {
            name, accel, cpus, memory, disk, mounts, docker, dns, ui, policy, httpProxy, httpsProxy, noProxy, proxyFromEnv, timeout,
        };
        up.SetAction(parse =>
        {
            string? rules = parse.GetValue(policy);
            Func<MachineGateway, MachineGateway> gateway = g => g.With(rules is null or "none" ? null : new FileInfo(rules), rules == "none",
                parse.GetValue(httpProxy), parse.GetValue(httpsProxy), parse.GetValue(noProxy), parse.GetValue(proxyFromEnv));
            return RunUp(parse.GetValue(name)!, parse.GetValue(accel), parse.GetValue(cpus), parse.GetValue(memory), parse.GetValue(disk),
                parse.GetResult(mounts) is null ? null : parse.GetValue(mounts) ?? [], parse.GetValue(docker), parse.GetResult(dns) is null ? null : parse.GetValue(dns) ?? [],
                parse.GetValue(ui), gateway, parse.GetValue(timeout));
        });
        return up;
    }

    private static int RunUp(string name, string? accel, int? cpus, string? memory, string? diskSize, string[]? mounts, bool? docker, string[]? dns, string? ui,
        Func<MachineGateway, MachineGateway> gateway, int timeout)
    {
        var clock = Stopwatch.StartNew();
        MachinePaths paths = MachinePaths.For(name);
        Func<MachineConfig, MachineConfig> flags = ParseFlags(accel, cpus, memory, diskSize, mounts, docker, ui);
        // Checked now, against what is kept (or nothing), so that a bad flag fails before anything is touched.
        _ = gateway(Directory.Exists(paths.Data) ? MachineGateway.Read(paths) : new MachineGateway());
        foreach (string d in dns ?? [])
        {
            _ = GatewaySettings.Parse(1500, [d], [], null); // the same check kit net run makes
        }
        paths.Create();
        if (Ask(paths, new ControlRequest("status")) is { Ok: true, Status: { } running })
        {
            Console.Error.WriteLine($"kit up: {name} is already {running.State} ({running.Accel}, pid {running.Pid})");
            return 0;
        }
        using (FileStream? held = MachineLock.TryTake(paths))
        {
            if (held is not null)
            {
                Prepare(paths, flags, dns);
                gateway(MachineGateway.Read(paths)).Write(paths);
                StartDaemon(paths);
            }
        }
        MachineStatus status = WaitForAgent(paths, TimeSpan.FromSeconds(Math.Max(1, timeout)));
        Console.Error.WriteLine($"kit up: {name} is running ({status.Accel}, {status.Cpus} vCPUs, {status.MemoryMiB} MiB, {status.Address}); "
            + $"ready in {clock.Elapsed.TotalSeconds:0.0} s");
        if (status.DockerSocket is { } socket)
        {
            Console.Error.WriteLine($"kit up: docker: export DOCKER_HOST=unix://{socket}");
        }
        if (status.Ui is { } page)
        {
            Console.Error.WriteLine($"kit up: inspector on {page}");
        }
        return 0;
    }

    /// <summary>What the flags change in a configuration, checked before anything is touched.</summary>
    private static Func<MachineConfig, MachineConfig> ParseFlags(string? accel, int? cpus, string? memory, string? diskSize, string[]? mounts, bool? docker, string? ui)
    {
        System.Net.IPEndPoint? inspector = ui is null or "none" ? null : GatewaySettings.ParseUi(ui, anyAddress: false);
        Accelerator? a = accel is null ? null : Accelerators.Parse(accel);
        if (cpus is int c && c is < 1 or > 64)
        {
            throw new CliException($"--cpus must be 1-64, got {c}");
        }
        ulong? m = null, d = null;
        if (memory is not null)
        {
            m = VmCommand.TryParseSize(memory, out ulong bytes) && bytes >= 256UL << 20 ? bytes : throw new CliException($"--memory: cannot use \"{memory}\" (at least 256M, e.g. 2G)");
        }
        if (diskSize is not null)
        {
            d = VmCommand.TryParseSize(diskSize, out ulong bytes) && bytes >= 1UL << 30 ? bytes : throw new CliException($"--disk-size: cannot use \"{diskSize}\" (at least 1G, e.g. 20G)");
        }
        MachineMount[]? shares = mounts?.Select(MachineMount.Parse).ToArray();
        return config => config with
        {
            Accel = a ?? config.Accel,
            Cpus = cpus ?? config.Cpus,
            MemoryBytes = m ?? config.MemoryBytes,
            DiskBytes = d is ulong size ? Math.Max(size, config.DiskBytes) : config.DiskBytes,
            Mounts = shares ?? config.Mounts,
            Docker = docker ?? config.Docker,
            Ui = ui is null ? config.Ui : inspector,
        };
    }

    /// <summary>Under the machine's lock, with no daemon running: records the configuration, builds the image, makes the disk.</summary>
    private static void Prepare(MachinePaths paths, Func<MachineConfig, MachineConfig> flags, string[]? dns)
    {
        using var store = OpenStore();
        var files = new BranchFiles(store, paths.Branch);
        string? previous = files.Read("state/state");
        if (previous is { } p && p.Trim() is "starting" or "running" or "stopping" or "crashed")
        {
            Console.Error.WriteLine($"kit up: {paths.Name} had crashed; the end of its log ({paths.Log}):");
            foreach (string line in LogTail(paths, 10))
            {
                Console.Error.WriteLine("  " + line);
            }
        }
        bool created = files.Read("config/cpus") is null;
        MachineConfig config = flags(created ? new MachineConfig() : MachineConfig.Read(files));
        var changes = new Dictionary<string, string?>(config.Files());
        if (dns is not null)
        {
            changes["config/dns-upstream"] = string.Concat(dns.Select(d => d + "\n"));
        }
        if (created)
        {
            changes["config/ports"] = "# Static forwards, one HOSTPORT:GUESTPORT[/udp] per line; applied live.\n";
        }
        files.Commit(changes, created ? $"kit up {paths.Name}: created" : $"kit up {paths.Name}: configuration");

        // The agent is not in the image: each boot brings this kit's own (AgentInitrd). Checked here so that a kit
        // without one fails before anything is built.
        _ = AgentBinary.Find();
        string? recordedDocker = files.Read("image/docker")?.Trim();
        if (File.Exists(paths.Disk) && recordedDocker is not null && recordedDocker != (config.Docker ? "true" : "false"))
        {
            throw new CliException($"{paths.Name}'s disk was made {(config.Docker ? "without" : "with")} docker; --docker decides when a machine is created (kit rm {paths.Name} first)");
        }
        string? kernel = files.Read("image/kernel")?.Trim(), initrd = files.Read("image/initrd")?.Trim();
        if (!File.Exists(paths.Disk) || !File.Exists(kernel) || !File.Exists(initrd))
        {
            // A machine keeps booting the kernel its disk's modules were installed for: the image's pinned copy, recorded
            // in DataKit when the disk is made (a newer image with a newer kernel serves new machines).
            ImagePaths image = MachineImage.Ensure(config.Docker, null);
            if (!File.Exists(paths.Disk))
            {
                Console.Error.WriteLine($"kit up: making {paths.Name}'s disk ({config.DiskBytes >> 30} GiB, sparse copy of the image)");
                MachineDisk.Create(image.Image, paths.Disk, config.DiskBytes);
            }
            files.Commit(new Dictionary<string, string?>
            {
                ["image/path"] = image.Image + "\n",
                ["image/kernel"] = image.Kernel + "\n",
                ["image/initrd"] = image.Initrd + "\n",
                ["image/docker"] = config.Docker ? "true\n" : "false\n",
            }, $"kit up {paths.Name}: boots {Path.GetFileName(Path.GetDirectoryName(image.Kernel))}");
        }
        if ((ulong)new FileInfo(paths.Disk).Length < config.DiskBytes)
        {
            Console.Error.WriteLine($"kit up: growing {paths.Name}'s disk to {config.DiskBytes >> 30} GiB");
            MachineDisk.Grow(paths.Disk, config.DiskBytes);
        }
    }

    /// <summary>
    /// Starts <c>kit machine-daemon NAME</c> in a new session (util-linux setsid, forking so that it is not our child):
    /// it outlives this command and the terminal, and puts its own stdio on the machine's log at once.
    /// </summary>
    private static void StartDaemon(MachinePaths paths)
    {
        string self = Environment.ProcessPath ?? throw new CliException("cannot tell where the kit executable is");
        var start = new ProcessStartInfo("setsid") { UseShellExecute = false };
        foreach (string a in (string[])["--fork", self, "machine-daemon", paths.Name])
        {
            start.ArgumentList.Add(a);
        }
        if (KitLogging.Level <= Microsoft.Extensions.Logging.LogLevel.Debug)
        {
            start.Environment["KIT_LOG_LEVEL"] = "debug";
        }
        using Process? setsid = Process.Start(start);
        if (setsid is null)
        {
            throw new CliException("cannot start setsid (Debian: util-linux)");
        }
        setsid.WaitForExit();
    }

    private static MachineStatus WaitForAgent(MachinePaths paths, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        // The daemon's control socket appears within a second or two; its answer to "wait" comes with the agent's.
        while (clock.Elapsed < timeout)
        {
            ControlReply? reply = Ask(paths, new ControlRequest("wait"), timeout - clock.Elapsed);
            if (reply is { Ok: true, Status: { } status })
            {
                return status;
            }
            if (reply is { Ok: false } failed)
            {
                throw new CliException(Failure(paths, failed.Error ?? "the machine failed to start"));
            }
            if (!MachineLock.IsHeld(paths) && clock.Elapsed > TimeSpan.FromSeconds(2))
            {
                throw new CliException(Failure(paths, "the machine's daemon exited before its agent answered"));
            }
            Thread.Sleep(100);
        }
        throw new CliException(Failure(paths, $"the guest agent did not answer within {timeout.TotalSeconds:0} s (the machine goes on starting; kit status {paths.Name})"));
    }

    private static string Failure(MachinePaths paths, string why) =>
        string.Join('\n', [$"up {paths.Name}: {why}; the end of {paths.Log}:", .. LogTail(paths, 15).Select(l => "  " + l)]);

    private static ControlReply? Ask(MachinePaths paths, ControlRequest request, TimeSpan? timeout = null)
    {
        if (!File.Exists(paths.Control))
        {
            return null;
        }
        try
        {
            return ControlClient.AskAsync(paths.Control, request, timeout ?? TimeSpan.FromSeconds(10)).GetAwaiter().GetResult();
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or JsonException)
        {
            return null;
        }
    }

    internal static IReadOnlyList<string> LogTail(MachinePaths paths, int lines)
    {
        try
        {
            using var stream = new FileStream(paths.Log, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            long from = Math.Max(0, stream.Length - 16 * 1024);
            stream.Seek(from, SeekOrigin.Begin);
            string text = new StreamReader(stream, Encoding.UTF8).ReadToEnd();
            string[] all = text.Replace("\r", "", StringComparison.Ordinal).Split('\n', StringSplitOptions.RemoveEmptyEntries);
            return all[Math.Max(0, all.Length - lines)..];
        }
        catch (IOException)
        {
            return [];
        }
    }

    internal static GitStore OpenStore()
    {
        NativeGit.Prepare();
        string path = DataCommand.DefaultStore();
        try
        {
            // Durable as the machine daemon's DataKit is (DataKitOptions.Default): a machine's configuration survives a power cut.
            return GitStore.Open(path, syncWrites: true);
        }
        catch (Exception e) when (e is LibGit2Sharp.LibGit2SharpException or IOException)
        {
            throw new CliException($"cannot open the DataKit store {path}: {e.Message}");
        }
    }

    // ---------- kit status ----------

    private static Command Status()
    {
        var name = NameArgument();
        var json = new Option<bool>("--json") { Description = "Print the status as one JSON object." };
        var status = new Command("status", "Show a machine: state, accel, cpus, memory, address, forwarded ports, docker socket.") { name, json };
        status.SetAction(parse =>
        {
            MachineStatus s = StatusOf(MachinePaths.For(parse.GetValue(name)!));
            if (parse.GetValue(json))
            {
                Console.WriteLine(JsonSerializer.Serialize(s, ControlJson.Default.MachineStatus));
            }
            else
            {
                Print(s);
            }
            return 0;
        });
        return status;
    }

    internal static MachineStatus StatusOf(MachinePaths paths)
    {
        if (Ask(paths, new ControlRequest("status")) is { Ok: true, Status: { } live })
        {
            return live;
        }
        if (!Directory.Exists(paths.Data))
        {
            throw new CliException($"no machine named {paths.Name} (kit up {paths.Name} creates it)");
        }
        using GitStore store = OpenStore();
        var files = new BranchFiles(store, paths.Branch);
        MachineConfig config = MachineConfig.Read(files);
        string recorded = files.Read("state/state")?.Trim() ?? "stopped";
        bool held = MachineLock.IsHeld(paths);
        // No daemon answers: either it is between start and its control socket, or the machine is down. A recorded
        // "running" with nobody holding the lock means the daemon died without recording how (killed): crashed.
        string state = held ? "starting" : recorded is "stopped" ? "stopped" : "crashed";
        return new MachineStatus
        {
            Name = paths.Name,
            State = state,
            Accel = files.Read("state/accel")?.Trim(),
            Cpus = config.Cpus,
            MemoryMiB = (long)(config.MemoryBytes >> 20),
            DiskMiB = File.Exists(paths.Disk) ? new FileInfo(paths.Disk).Length >> 20 : 0,
            Mounts = [.. config.Mounts.Select(m => m.Line)],
            Log = paths.Log,
            LogTail = state == "crashed" ? LogTail(paths, 15) : null,
        };
    }

    private static void Print(MachineStatus s)
    {
        var lines = new List<(string, string)>
        {
            ("name", s.Name),
            ("state", s.State),
            ("accel", s.Accel ?? "-"),
            ("cpus", s.Cpus.ToString(CultureInfo.InvariantCulture)),
            ("memory", $"{s.MemoryMiB} MiB"),
            ("disk", $"{s.DiskMiB} MiB"),
            ("address", s.Address ?? "-"),
            ("uptime", s.UptimeSeconds is double u ? $"{u:0} s" : "-"),
            ("docker", s.DockerSocket is { } d ? $"unix://{d}" : "-"),
            ("ui", s.Ui ?? "-"),
            ("gateway", s.Gateway ?? "-"),
            ("datakit", s.DataKitSocket is { } k ? $"unix:{k}" : "-"),
            ("mounts", s.Mounts.Count == 0 ? "-" : string.Join(", ", s.Mounts)),
            ("log", s.Log ?? "-"),
        };
        foreach ((string key, string value) in lines)
        {
            Console.WriteLine($"{key,-8} {value}");
        }
        Console.WriteLine(s.Ports.Count == 0 ? "ports    -" : "ports");
        foreach (ForwardState p in s.Ports)
        {
            Console.WriteLine($"  {p.Protocol} 127.0.0.1:{p.HostPort} -> {p.GuestPort} ({p.Source})" + (p.Problem is null ? "" : $": not forwarded, {p.Problem}"));
        }
        foreach (string problem in s.Problems)
        {
            Console.WriteLine($"problem  {problem}");
        }
        foreach (string line in s.LogTail ?? [])
        {
            Console.WriteLine($"  | {line}");
        }
    }

    // ---------- kit down / kit rm ----------

    private static Command Down()
    {
        var name = NameArgument();
        var force = new Option<bool>("--force") { Description = "End the VM now instead of pressing the power button." };
        var timeout = new Option<int>("--timeout") { HelpName = "SECONDS", Description = "How long the guest may take to shut down before it is forced.", DefaultValueFactory = _ => 60 };
        var down = new Command("down", "Stop a machine: press its ACPI power button (the guest shuts down cleanly), forced after --timeout.") { name, force, timeout };
        down.SetAction(parse => Stop(MachinePaths.For(parse.GetValue(name)!), parse.GetValue(force), parse.GetValue(timeout)));
        return down;
    }

    private static int Stop(MachinePaths paths, bool force, int timeout)
    {
        var clock = Stopwatch.StartNew();
        ControlReply? reply = Ask(paths, new ControlRequest("down", force, timeout), TimeSpan.FromSeconds(timeout + 30));
        if (reply is null)
        {
            Console.Error.WriteLine($"kit down: {paths.Name} is not running");
            return 0;
        }
        // The daemon answers once the VM ended; it is gone when it lets go of the machine's lock.
        while (MachineLock.IsHeld(paths) && clock.Elapsed < TimeSpan.FromSeconds(timeout + 60))
        {
            Thread.Sleep(100);
        }
        Console.Error.WriteLine($"kit down: {paths.Name} stopped in {clock.Elapsed.TotalSeconds:0.0} s");
        return 0;
    }

    private static Command Remove()
    {
        var name = new Argument<string>("name") { Description = "The machine to delete (its disk, log and DataKit branch)." };
        var force = new Option<bool>("--force", "-f") { Description = "Stop it first (kit down --force) if it runs." };
        var rm = new Command("rm", "Delete a stopped machine: its disk, its log and its DataKit branch.") { name, force };
        rm.SetAction(parse =>
        {
            MachinePaths paths = MachinePaths.For(parse.GetValue(name)!);
            if (!Directory.Exists(paths.Data))
            {
                throw new CliException($"no machine named {paths.Name}");
            }
            if (MachineLock.IsHeld(paths))
            {
                if (!parse.GetValue(force))
                {
                    throw new CliException($"{paths.Name} is running; kit down {paths.Name} first (or kit rm --force)");
                }
                Stop(paths, force: true, timeout: 10);
            }
            using (FileStream? held = MachineLock.TryTake(paths) ?? throw new CliException($"{paths.Name} is starting; try again"))
            {
                // Only the files kit made: a directory with anything else in it is left, and said so.
                foreach (string f in (string[])[paths.Disk, paths.Log])
                {
                    File.Delete(f);
                }
            }
            File.Delete(paths.Lock);
            try
            {
                Directory.Delete(paths.Data);
            }
            catch (IOException)
            {
                Console.Error.WriteLine($"kit rm: left {paths.Data}: it holds files kit did not make");
            }
            using (GitStore store = OpenStore())
            {
                if (store.BranchExists(paths.Branch))
                {
                    store.DeleteBranch(paths.Branch);
                }
            }
            Console.Error.WriteLine($"kit rm: {paths.Name} deleted");
            return 0;
        });
        return rm;
    }

    private static Command Daemon()
    {
        var name = new Argument<string>("name");
        var daemon = new Command("machine-daemon", "Run a machine in the foreground (what kit up starts in the background).") { name };
        daemon.Hidden = true;
        daemon.SetAction(parse => MachineDaemon.Run(parse.GetValue(name)!));
        return daemon;
    }
}
