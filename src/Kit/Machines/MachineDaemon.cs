using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Kit.Agent.Protocol;
using Kit.Cli.Commands;
using Kit.Cli.Vm;
using Kit.DataKit;
using Kit.HyperKit.Vm;
using Kit.Linux;
using Kit.NineP.Server;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Machines;

/// <summary>
/// One running machine: the process <c>kit up</c> starts in the background (its own session, its stdio on the machine's
/// log). It holds the machine's lock for its whole life and owns everything the machine needs: DataKit (the machine's
/// branch, served to the guest at /datakit and to the host on a 0600 socket), VPNKit (the guest's network and the port
/// forwards), the VM (Kit's VMM or QEMU), the link to the guest agent, the docker socket relay and the control socket
/// that <c>kit up/status/down</c> talk to. It ends when the VM ends, leaving the state in DataKit (stopped or crashed).
/// </summary>
internal sealed class MachineDaemon
{
    /// <summary>The guest's address: the first (and only) address VPNKit's DHCP hands out (GatewayOptions.FirstGuestIp).</summary>
    public const string GuestAddress = "192.168.65.3";

    private const string DockerSocketInGuest = "/run/docker.sock";

    private readonly MachinePaths _paths;
    private readonly CancellationTokenSource _stop = new();
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource<int> _ended = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly MachineControl _control = new();
    private readonly List<string> _problems = [];
    private MachineConfig _config = new();
    private Accelerator _accel;
    private BranchFiles? _files;
    private PortForwards? _forwards;

    /// <summary>What <c>kit status</c> says of the policy and proxies the gateway started with (null: none).</summary>
    private string? _gateway;
    private double? _bootSeconds;
    private volatile string _state = "starting";
    private volatile bool _forcedDown;

    private MachineDaemon(MachinePaths paths) => _paths = paths;

    /// <summary>Runs machine <paramref name="name"/> until its VM ends; returns the exit code.</summary>
    public static int Run(string name)
    {
        MachinePaths paths = MachinePaths.For(name);
        paths.Create();
        FileStream? held = MachineLock.TryTake(paths);
        if (held is null)
        {
            Console.Error.WriteLine($"kit: machine {name} is already running");
            return 3;
        }
        using (held)
        {
            RedirectStdio(paths.Log);
            return new MachineDaemon(paths).Serve();
        }
    }

    /// <summary>Standard input from /dev/null, output and error appended to the log: the terminal or pipe of the
    /// <c>kit up</c> that started the daemon is let go, so that its caller sees end of file.</summary>
    private static void RedirectStdio(string log)
    {
        int nul = Sys.Open("/dev/null", Sys.O_RDONLY | Sys.O_CLOEXEC);
        int file = Sys.Open(log, Sys.O_WRONLY | Sys.O_CREAT | Sys.O_APPEND | Sys.O_NOFOLLOW | Sys.O_CLOEXEC, 0x180);
        if (nul < 0 || file < 0)
        {
            throw new CliException($"cannot open the machine log {log}: {Sys.ErrnoText(Sys.LastErrno)}");
        }
        // .NET's Console reads and writes through duplicates it made of 0 and 1 when they were first used (the CLI
        // parser's output, before this), and those would keep the caller's pipes open after 0-2 move: a caller waiting
        // for end of file would wait for the machine's whole life. So every other descriptor that is the same pipe or
        // socket as 0, 1 or 2 is pointed at the replacement too.
        string?[] original = [FdTarget(0), FdTarget(1), FdTarget(2)];
        foreach (string entry in Directory.GetFiles("/proc/self/fd"))
        {
            if (int.TryParse(Path.GetFileName(entry), CultureInfo.InvariantCulture, out int fd) && fd > 2 && fd != nul && fd != file
                && FdTarget(fd) is string target && (target.StartsWith("pipe:", StringComparison.Ordinal) || target.StartsWith("socket:", StringComparison.Ordinal))
                && Array.IndexOf(original, target) is int which && which >= 0)
            {
                Sys.Dup2(which == 0 ? nul : file, fd);
            }
        }
        Sys.Dup2(nul, 0);
        Sys.Dup2(file, 1);
        Sys.Dup2(file, 2);
        Sys.CloseAll([nul, file]);
        Console.SetOut(new StreamWriter(Console.OpenStandardOutput()) { AutoFlush = true });
        Console.SetError(new StreamWriter(Console.OpenStandardError()) { AutoFlush = true });
    }

    private static string? FdTarget(int fd)
    {
        try
        {
            return new FileInfo($"/proc/self/fd/{fd}").LinkTarget;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private void Say(string line) => Console.Error.WriteLine($"{DateTime.UtcNow:yyyy-MM-ddTHH:mm:ss.fffZ} kit machine {_paths.Name}: {line}");

    private int Serve()
    {
        Say($"daemon {Environment.ProcessId} starting");
        using ILoggerFactory logs = KitLogging.CreateFactory();
        NativeGit.Prepare();
        DataKitServer data;
        try
        {
            data = new DataKitServer(DataCommand.DefaultStore(), logs.CreateLogger("datakit"));
        }
        catch (Exception e) when (e is LibGit2Sharp.LibGit2SharpException or IOException)
        {
            Say($"cannot open the DataKit store: {e.Message}");
            return 1;
        }
        var owned = new List<IDisposable>();
        try
        {
            _files = new BranchFiles(data.Store, _paths.Branch);
            _config = MachineConfig.Read(_files);
            _accel = Accelerators.Resolve(_config.Accel);
            Supervision.WritePidFile(_paths.Pid);
            string kernel = _files.Read("image/kernel")?.Trim() ?? "", baseInitrd = _files.Read("image/initrd")?.Trim() ?? "";
            if (!File.Exists(_paths.Disk) || !File.Exists(kernel) || !File.Exists(baseInitrd))
            {
                throw new CliException($"the machine's disk or kernel is missing ({_paths.Disk}, {kernel}); kit up {_paths.Name} makes them");
            }
            string initrd = Path.Combine(_paths.Runtime, "initrd.gz");
            AgentInitrd.Write(baseInitrd, AgentBinary.Find(), initrd);
            owned.Add(new Deleter(initrd));

            // DataKit for host tools (0600 socket in the 0700 runtime directory) and for the guest: through Kit's
            // virtio-9p relaying to that socket under kvm; under tcg QEMU's virtio-9p cannot relay, so the guest mounts
            // it over TCP through VPNKit (192.168.65.2 is the host's loopback, where it listens on a port of its own).
            UnixListen(data, _paths.DataKit);
            var shares = new List<ShareOptions>();
            string datakit;
            if (_accel == Accelerator.Kvm)
            {
                shares.Add(new ShareOptions(UpCommand.DataKitTag, $"unix:{_paths.DataKit}"));
                datakit = "virtio";
            }
            else
            {
                var endpoint = (System.Net.IPEndPoint)data.Listen(Address("tcp://127.0.0.1:0"));
                datakit = $"tcp:{endpoint.Port}";
            }
            // Host directories at the same path in the guest: virtio-9p tags m0, m1, ... (Kit's HostFs under kvm, QEMU's
            // local fsdev under tcg), listed for the guest's rc in kit.mounts as "tag:TAG PATH ro|rw" lines.
            var mounts = new StringBuilder();
            for (int i = 0; i < _config.Mounts.Count; i++)
            {
                MachineMount m = _config.Mounts[i];
                shares.Add(new ShareOptions($"m{i}", m.Path, m.ReadOnly));
                mounts.Append(CultureInfo.InvariantCulture, $"tag:m{i} {m.Path} {(m.ReadOnly ? "ro" : "rw")}\n");
            }
            var spec = new VmSpec
            {
                Kernel = new FileInfo(kernel),
                Initrd = new FileInfo(initrd),
                Cmdline = string.Join(' ', new[]
                {
                    // no_timer_check: on a software CPU (or nested) the kernel's IO-APIC timer check can miss its window
                    // when the host is busy and panic ("IO-APIC + timer doesn't work"); the timer works regardless.
                    VmCommand.DefaultCmdline, "quiet", "no_timer_check", "kit.root=/dev/vda", $"kit.hostname={_paths.Name}", $"kit.datakit={datakit}",
                    mounts.Length > 0 ? "kit.mounts=" + Convert.ToBase64String(Encoding.UTF8.GetBytes(mounts.ToString())) : "",
                    _config.Docker ? "kit.docker=1" : "",
                }.Where(a => a.Length > 0)),
                MemoryBytes = _config.MemoryBytes,
                Cpus = _config.Cpus,
                Net = "vpnkit",
                Accel = _accel,
                Control = _control,
                VsockPath = _paths.Vsock,
            };
            spec.Disks.Add(new DiskOptions(_paths.Disk));
            spec.Shares.AddRange(shares);

            GatewaySettings gateway = MachineGateway.Read(_paths).Apply(
                GatewaySettings.Parse(1500, [.. DnsUpstreams()], [], null) with { BlockMetadata = true, Ui = _config.Ui }, Environment.GetEnvironmentVariable);
            if (gateway.PolicyRules.Count > 0 || gateway.Proxy is not null)
            {
                _gateway = $"{gateway.PolicyRules.Count} policy rule(s); http proxy {gateway.Proxy?.Http?.ToString() ?? "-"}, https proxy {gateway.Proxy?.Https?.ToString() ?? "-"}";
                Say("gateway: " + _gateway);
            }
            using VmNetwork network = VmNetwork.Create("vpnkit", gateway);
            _forwards = new PortForwards(network.Server!, Environment.UserName == "root" || Environment.IsPrivilegedProcess);
            _forwards.Changed += () => Commit(new() { ["state/ports"] = PortLines() }, "ports changed");
            ApplyStaticPorts();
            if (_config.Docker)
            {
                owned.Add(DockerRelay.Listen(_paths.Docker, OpenAgentAsync, DockerSocketInGuest, Say));
            }
            owned.Add(new ControlServer(_paths.Control, HandleAsync));
            Commit(new()
            {
                ["state/state"] = "starting\n",
                ["state/accel"] = Name(_accel) + "\n",
                ["state/address"] = GuestAddress + "\n",
                ["state/started"] = DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture) + "\n",
                ["state/ports"] = "",
            }, $"kit up {_paths.Name}: starting ({Name(_accel)}, {_config.Cpus} vCPUs, {_config.MemoryBytes >> 20} MiB)");
            _ = Task.Run(AgentLinkAsync);
            _ = Task.Run(() => WatchConfigAsync(data));

            Say($"booting: {Name(_accel)}, {_config.Cpus} vCPUs, {_config.MemoryBytes >> 20} MiB, disk {_paths.Disk}");
            int code;
            try
            {
                code = VmLauncher.Run(spec, network);
            }
            catch (CliException e)
            {
                Say(e.Message);
                code = 1;
            }
            bool clean = code == 0 || _forcedDown;
            _state = clean ? "stopped" : "crashed";
            Say(clean ? "the machine stopped" : $"the machine ended unexpectedly (exit code {code})");
            Commit(new() { ["state/state"] = _state + "\n", ["state/ports"] = "" }, $"kit: {_paths.Name} {_state}");
            _ended.TrySetResult(code);
            _ready.TrySetException(new IOException($"the machine {_state} before its agent answered (log: {_paths.Log})"));
            return clean ? 0 : 1;
        }
        catch (CliException e)
        {
            Say(e.Message);
            _state = "crashed";
            Commit(new() { ["state/state"] = "crashed\n" }, $"kit: {_paths.Name} failed to start");
            _ready.TrySetException(new IOException(e.Message));
            _ended.TrySetResult(1);
            return 1;
        }
        finally
        {
            _stop.Cancel();
            for (int i = owned.Count - 1; i >= 0; i--)
            {
                owned[i].Dispose();
            }
            data.DisposeAsync().AsTask().GetAwaiter().GetResult();
            DeleteOwnedFile(_paths.Pid);
        }
    }

    private static string Name(Accelerator a) => a.ToString().ToLowerInvariant();

    private IReadOnlyList<string> DnsUpstreams() =>
        (_files!.Read("config/dns-upstream") ?? "").Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);

    private static ListenAddress Address(string text) =>
        ListenAddress.TryParse(text, out ListenAddress? a, out string error) ? a! : throw new CliException(error);

    /// <summary>A 0600 Unix listener; the server removes its socket file when it stops (UnixSocketFile).</summary>
    private static void UnixListen(DataKitServer data, string path)
    {
        data.Listen(Address($"unix:{path}"));
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
    }

    /// <summary>Removes a file this daemon made, if it is still a regular file or socket (never follows a link).</summary>
    private static void DeleteOwnedFile(string path)
    {
        try
        {
            var info = new FileInfo(path);
            if (info.Exists && info.LinkTarget is null)
            {
                info.Delete();
            }
        }
        catch (IOException)
        {
        }
    }

    private void Commit(Dictionary<string, string?> changes, string message)
    {
        try
        {
            _files?.Commit(changes, message);
        }
        catch (Exception e) when (e is IOException or LibGit2Sharp.LibGit2SharpException)
        {
            Say($"cannot record in DataKit ({message}): {e.Message}");
        }
    }

    private string PortLines() => string.Concat((_forwards?.States ?? []).Select(s =>
        $"{s.Protocol} 127.0.0.1:{s.HostPort} -> {s.GuestPort} {s.Source}{(s.Problem is null ? "" : " not forwarded: " + s.Problem)}\n"));

    // ---------- the guest agent ----------

    private async Task<Stream> OpenAgentStreamAsync(CancellationToken ct) =>
        await VsockDial.ConnectAsync(_paths.Vsock, AgentPort.Vsock, ct).ConfigureAwait(false);

    private async Task<AgentClient> OpenAgentAsync(CancellationToken ct)
    {
        Stream stream = await OpenAgentStreamAsync(ct).ConfigureAwait(false);
        try
        {
            return await AgentClient.ConnectAsync(stream, ct).ConfigureAwait(false);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Connects to the agent until it answers (that is the machine being up), then follows its listening ports; when the
    /// agent goes away (restarted by init, or the guest shutting down), connects again.
    /// </summary>
    private async Task AgentLinkAsync()
    {
        CancellationToken ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                await using AgentClient agent = await OpenAgentAsync(ct).ConfigureAwait(false);
                if (_bootSeconds is null)
                {
                    _bootSeconds = _clock.Elapsed.TotalSeconds;
                    _state = "running";
                    Say($"the agent answered after {_bootSeconds:0.0} s ({agent.Info.Hostname}, kernel {agent.Info.Kernel}, agent {agent.Info.AgentVersion})");
                    Commit(new() { ["state/state"] = "running\n", ["state/boot-seconds"] = $"{_bootSeconds:0.0}\n" }, $"kit: {_paths.Name} running");
                    _ready.TrySetResult();
                }
                await foreach (IReadOnlyList<ListeningPort> ports in agent.WatchPortsAsync(ct).ConfigureAwait(false))
                {
                    _forwards!.SetGuestListeners(ports);
                }
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is IOException or SocketException or AgentProtocolException or ObjectDisposedException)
            {
                if (_bootSeconds is not null && _state == "running")
                {
                    Say($"lost the agent ({e.Message}); reconnecting");
                }
            }
            _forwards?.SetGuestListeners([]);
            try
            {
                await Task.Delay(_bootSeconds is null ? 200 : 1000, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    // ---------- configuration changes made through DataKit ----------

    private string? _portsText;

    private void ApplyStaticPorts()
    {
        string? text = _files!.Read("config/ports");
        if (text == _portsText)
        {
            return;
        }
        _portsText = text;
        IReadOnlyList<Kit.VpnKit.PortPublish> ports = MachineConfig.ReadPorts(text, out List<string> problems);
        lock (_problems)
        {
            _problems.Clear();
            _problems.AddRange(problems);
        }
        foreach (string p in problems)
        {
            Say(p);
        }
        _forwards!.SetStatic(ports);
        Say($"config/ports: {ports.Count} static forward(s)");
    }

    /// <summary>
    /// Applies config/ports live whenever the branch moves (a DataKit transaction from the guest or a host tool, or a
    /// plain git push onto the branch, which DataKit's head poller notices).
    /// </summary>
    private async Task WatchConfigAsync(DataKitServer data)
    {
        while (!_stop.IsCancellationRequested)
        {
            Task next = data.Store.Changes.NextAsync();
            try
            {
                ApplyStaticPorts();
            }
            catch (Exception e) when (e is IOException or LibGit2Sharp.LibGit2SharpException)
            {
                Say($"cannot read config/ports: {e.Message}");
            }
            await Task.WhenAny(next, Task.Delay(Timeout.Infinite, _stop.Token)).ConfigureAwait(false);
        }
    }

    // ---------- the control socket ----------

    private async Task<ControlReply> HandleAsync(ControlRequest request)
    {
        switch (request.Op)
        {
            case "status":
                return new ControlReply(true, Status: Status());
            case "wait":
                try
                {
                    await _ready.Task.ConfigureAwait(false);
                    return new ControlReply(true, Status: Status());
                }
                catch (IOException e)
                {
                    return new ControlReply(false, e.Message);
                }
            case "down":
                _ = Task.Run(() => DownAsync(request.Force, TimeSpan.FromSeconds(Math.Clamp(request.TimeoutSeconds, 1, 3600))));
                int code = await _ended.Task.ConfigureAwait(false);
                return new ControlReply(true, Status: Status() with { State = _state });
            default:
                return new ControlReply(false, $"unknown request \"{request.Op}\"");
        }
    }

    /// <summary>
    /// The power button first (the guest shuts down as on a real machine), the agent's clean shutdown when the VMM has
    /// no button or the guest ignored it, and the plug pulled after <paramref name="timeout"/>.
    /// </summary>
    private async Task DownAsync(bool force, TimeSpan timeout)
    {
        _state = "stopping";
        if (force)
        {
            Say("kit down --force: ending the VM now");
            _forcedDown = true;
            _control.Quit();
            return;
        }
        bool pressed = _control.PressPowerButton();
        Say(pressed ? "kit down: pressed the ACPI power button" : "kit down: asking the agent to shut down (this VMM has no power button)");
        Task ended = _ended.Task;
        if (pressed && await Task.WhenAny(ended, Task.Delay(TimeSpan.FromSeconds(Math.Min(10, timeout.TotalSeconds / 2)))).ConfigureAwait(false) == ended)
        {
            return;
        }
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await using AgentClient agent = await OpenAgentAsync(cts.Token).ConfigureAwait(false);
            await agent.ShutdownAsync(cts.Token).ConfigureAwait(false);
            if (pressed)
            {
                Say("kit down: the guest ignored the power button; asked the agent to shut down");
            }
        }
        catch (Exception e) when (e is IOException or SocketException or AgentProtocolException or OperationCanceledException)
        {
            Say($"kit down: the agent did not take the shutdown ({e.Message})");
        }
        if (await Task.WhenAny(ended, Task.Delay(timeout)).ConfigureAwait(false) != ended)
        {
            Say($"kit down: still running after {timeout.TotalSeconds:0} s; ending the VM");
            _forcedDown = true;
            _control.Quit();
        }
    }

    private MachineStatus Status() => new()
    {
        Name = _paths.Name,
        State = _state,
        Accel = Name(_accel),
        Cpus = _config.Cpus,
        MemoryMiB = (long)(_config.MemoryBytes >> 20),
        DiskMiB = File.Exists(_paths.Disk) ? new FileInfo(_paths.Disk).Length >> 20 : 0,
        Address = GuestAddress,
        Ports = _forwards?.States ?? [],
        Mounts = [.. _config.Mounts.Select(m => m.Line)],
        UptimeSeconds = Math.Round(_clock.Elapsed.TotalSeconds, 1),
        BootSeconds = _bootSeconds is double b ? Math.Round(b, 1) : null,
        DockerSocket = _config.Docker ? _paths.Docker : null,
        Ui = _config.Ui is null ? null : $"http://{_config.Ui}/",
        Gateway = _gateway,
        DataKitSocket = _paths.DataKit,
        Pid = Environment.ProcessId,
        Log = _paths.Log,
        Problems = Problems(),
    };

    private List<string> Problems()
    {
        lock (_problems)
        {
            return [.. _problems];
        }
    }

    private sealed class Deleter(string path) : IDisposable
    {
        public void Dispose() => DeleteOwnedFile(path);
    }
}
