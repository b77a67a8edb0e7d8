using System.CommandLine;
using System.CommandLine.Parsing;
using System.Diagnostics;
using System.Globalization;
using Kit.Cli.Vm;
using Kit.VpnKit;
using Kit.VpnKit.Links;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit net run` (a command in a new network namespace whose eth0 is a TAP served by VPNKit, configured like pasta)
/// and `kit net serve` (VPNKit for VMs over QEMU stream/dgram sockets and hyperkit's VMN3T).
/// </summary>
internal static class NetCommand
{
    public static Command Create()
    {
        var mtu = new Option<int>("--mtu") { HelpName = "BYTES", Description = "Link MTU (576-65520).", DefaultValueFactory = _ => 1500 };
        var dns = new Option<string[]>("--dns-upstream") { HelpName = "IP:PORT", Description = "DNS upstream IP:PORT (repeatable; default: the host's resolv.conf)." };
        var publish = new Option<string[]>("--publish") { HelpName = "[HOST:]HOSTPORT:GUESTPORT", Description = "Forward host 127.0.0.1:HOSTPORT (or HOST, a loopback address: [::1]) to the guest's GUESTPORT ([HOST:]HOSTPORT:GUESTPORT[/udp], repeatable)." };
        var pcap = new Option<FileInfo?>("--pcap") { HelpName = "FILE", Description = "Write every frame to FILE (libpcap format)." };
        var control = new Option<string?>("--control") { HelpName = "PATH", Description = "Serve the port-forward control API (HTTP+JSON: GET/POST /forwards, DELETE /forwards/PROTO/PORT) on unix:PATH." };
        var policy = new GatewayPolicyOptions();
        var command = new Argument<string[]>("command") { Arity = ArgumentArity.OneOrMore, Description = "The command to run inside the namespace (after --)." };

        var run = new Command("run", "Run a command in a new network namespace whose eth0 is served by VPNKit (192.168.65.3/24, gateway and DNS 192.168.65.1).")
        {
            mtu, dns, publish, pcap, control, command,
        };
        foreach (Option o in policy.All)
        {
            run.Options.Add(o);
        }
        Supervision.AddTo(run);
        CliRunner.FailureExitCodes[run] = RunFailed;
        // docker run's convention: 125 when kit itself fails (CliRunner.FailureExitCodes), 126/127 when the command
        // cannot run, else the command's own code.
        run.SetAction(parse =>
        {
            // The command goes after "--": an unknown option before it is a usage error, not a program named "--bogus".
            if (UnknownOptionBeforeTheCommand(parse, parse.GetValue(command) ?? []) is string option)
            {
                throw new CliException($"unrecognized option '{option}' (the command goes after --)");
            }
            return Run(policy.Apply(GatewaySettings.Parse(parse.GetValue(mtu), parse.GetValue(dns), parse.GetValue(publish), parse.GetValue(pcap)), parse),
                parse.GetValue(command) ?? [], ControlPath(parse.GetValue(control)), parse);
        });

        var qemu = new Option<string[]>("--qemu") { HelpName = "unix:PATH", Description = "Serve QEMU -netdev stream on unix:PATH (repeatable)." };
        var dgram = new Option<string[]>("--dgram") { HelpName = "unix:PATH", Description = "Serve QEMU -netdev dgram on unix:PATH (repeatable)." };
        var vmnet = new Option<string[]>("--vmnet") { HelpName = "unix:PATH", Description = "Serve hyperkit virtio-vpnkit (VMN3T) on unix:PATH (repeatable)." };
        var vhostUser = new Option<string[]>("--vhost-user") { HelpName = "unix:PATH", Description = "Serve a vhost-user-net backend on unix:PATH for QEMU, cloud-hypervisor or crosvm (repeatable)." };
        var serve = new Command("serve", "Serve VMs over QEMU stream/dgram sockets, hyperkit's VMN3T protocol or vhost-user until interrupted.")
        {
            qemu, dgram, vmnet, vhostUser, mtu, dns, publish, pcap, control,
        };
        foreach (Option o in policy.All)
        {
            serve.Options.Add(o);
        }
        Supervision.AddTo(serve);
        serve.SetAction(parse => Serve(policy.Apply(GatewaySettings.Parse(parse.GetValue(mtu), parse.GetValue(dns), parse.GetValue(publish), parse.GetValue(pcap)), parse),
            parse.GetValue(qemu) ?? [], parse.GetValue(dgram) ?? [], parse.GetValue(vmnet) ?? [], parse.GetValue(vhostUser) ?? [],
            ControlPath(parse.GetValue(control)), parse));

        return new Command("net", "VPNKit: user-space networking for network namespaces and VMs.") { run, serve, NetFlowsCommand.Create(), NetFlowsCommand.CreateTop(), NetPcapCommand.Create() };
    }

    /// <summary>The command's first word when it starts with '-' and came before "--" (so it was an option kit does not know).</summary>
    private static string? UnknownOptionBeforeTheCommand(ParseResult parse, string[] command)
    {
        if (command.Length == 0 || !command[0].StartsWith('-'))
        {
            return null;
        }
        foreach (Token t in parse.Tokens)
        {
            if (t.Type == TokenType.DoubleDash)
            {
                return null;
            }
            if (t.Value == command[0])
            {
                return command[0];
            }
        }
        return null;
    }

    /// <summary>`kit net run`'s exit code when kit itself fails (docker run's 125).</summary>
    public const int RunFailed = 125;

    private static int Run(GatewaySettings options, string[] command, string? control, ParseResult parse)
    {
        if (command.Length == 0)
        {
            throw new CliException("kit net run needs a command after --");
        }
        if (CommandLookup.Check(command[0], Environment.GetEnvironmentVariable("PATH")) is (int code, string why))
        {
            throw new CliException(why, code);
        }
        if (!OperatingSystem.IsLinux())
        {
            throw new CliException("kit net run needs Linux network namespaces");
        }
        if (Environment.UserName != "root" && Environment.GetEnvironmentVariable("USER") != "root" && !IsRoot())
        {
            throw new CliException("kit net run needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a namespace and a TAP device");
        }
        int pid = Environment.ProcessId;
        string ns = NetRunNamespace.Name(pid);
        string tapName = $"kittap{pid % 1_000_000}";
        string etc = NetRunNamespace.EtcDirectory(ns);
        // A kit killed by SIGKILL cannot clean up; the next run removes what it can prove dead.
        NetRunNamespace.RemoveStale();
        // From here on SIGTERM, SIGHUP and SIGINT end the run through the finally below, as a normal exit does.
        using var signals = new ChildSignals(terminal: !Console.IsInputRedirected);
        using ILoggerFactory logs = KitLogging.CreateFactory();
        TapLink? tap = null;
        VpnKitServer? server = null;
        Net.ControlApi? api = null;
        IDisposable? ui = null;
        try
        {
            // The gateway first (it binds --publish ports and creates the --pcap file): a busy port or an unwritable
            // file fails before any namespace exists. The TAP is made in the host namespace (it goes when kit closes it)
            // because the gateway needs to know whether it offloads.
            tap = TapLink.Open(tapName, options.Mtu, offload: Environment.GetEnvironmentVariable("KIT_NET_NO_OFFLOAD") is not { Length: > 0 });
            server = new VpnKitServer(options.ServerOptions(tap.Offload), logs);
            server.Start();
            ui = options.StartUi(server);
            api = control is null ? null : new Net.ControlApi(server, control);
            if (signals.Received.IsCompleted)
            {
                return ChildSignals.ExitCode(signals.Received.Result);
            }

            Ip("netns", "add", ns);
            Ip("link", "set", tapName, "netns", ns);
            Ip("-n", ns, "link", "set", tapName, "name", "eth0");
            Ip("-n", ns, "link", "set", "eth0", "mtu", options.Mtu.ToString(CultureInfo.InvariantCulture));
            Ip("-n", ns, "link", "set", "lo", "up");
            Ip("-n", ns, "link", "set", "eth0", "up");
            Ip("-n", ns, "addr", "add", "192.168.65.3/24", "dev", "eth0");
            Ip("-n", ns, "route", "add", "default", "via", "192.168.65.1");
            // `ip netns exec` bind-mounts /etc/netns/NAME/* over /etc/*: the namespace's resolver is the gateway.
            Directory.CreateDirectory(etc);
            File.WriteAllText(Path.Combine(etc, "resolv.conf"),
                "nameserver 192.168.65.1\n" + (options.DnsSearch.Count > 0 ? $"search {string.Join(' ', options.DnsSearch)}\n" : ""));
            server.AddLink(tap);

            // setpriv sets PR_SET_PDEATHSIG before it execs `ip netns exec`, which execs the command: when kit dies, even
            // by SIGKILL, the kernel sends the command SIGTERM. The signal follows the thread that forked, which is this
            // command's own thread, alive until kit exits. Without setpriv the command runs as it is.
            string? setpriv = File.Exists("/usr/bin/setpriv") ? "/usr/bin/setpriv" : null;
            var start = new ProcessStartInfo(setpriv ?? "ip") { UseShellExecute = false };
            foreach (string a in (string[])[.. setpriv is null ? [] : (string[])["--pdeathsig", "TERM", "--", "ip"], "netns", "exec", ns, .. command])
            {
                start.ArgumentList.Add(a);
            }
            if (signals.Received.IsCompleted)
            {
                return ChildSignals.ExitCode(signals.Received.Result);
            }
            // The namespace is up: a supervisor waiting on --ready-fd may now use it.
            using Supervision ready = Supervision.Ready(parse);
            using Process child = Process.Start(start) ?? throw new CliException($"cannot start {command[0]}");
            signals.ChildStarted(child.Id);
            Task exited = child.WaitForExitAsync();
            if (Task.WaitAny(exited, signals.Received) == 0)
            {
                child.WaitForExit();
                return child.ExitCode;
            }
            // Stopped by a signal, which the child got too: it has a moment to finish, then it is killed.
            if (!exited.Wait(ChildSignals.Grace))
            {
                child.Kill(entireProcessTree: true);
                child.WaitForExit();
            }
            return ChildSignals.ExitCode(signals.Received.Result);
        }
        catch (Exception e) when (e is IOException or ArgumentException or System.ComponentModel.Win32Exception or System.Net.Sockets.SocketException)
        {
            throw new CliException(e.Message);
        }
        finally
        {
            api?.Dispose();
            ui?.Dispose();
            // Disposing the gateway flushes and closes the pcap.
            server?.Dispose();
            // Whatever the command left running in the namespace goes with it.
            NetRunNamespace.Remove(ns);
            tap?.Dispose();
        }
    }

    private static int Serve(GatewaySettings options, string[] qemu, string[] dgram, string[] vmnet, string[] vhostUser, string? control, ParseResult parse)
    {
        if (qemu.Length + dgram.Length + vmnet.Length + vhostUser.Length == 0)
        {
            throw new CliException("kit net serve needs at least one of --qemu, --dgram, --vmnet, --vhost-user");
        }
        using ILoggerFactory logs = KitLogging.CreateFactory();
        // QEMU stream/dgram and VMN3T peers send whole, checksummed frames: no offload. vhost-user-net carries the
        // virtio-net header, so with only vhost-user links the gateway may send TSO frames and partial checksums
        // (the offload is server-wide, so any other link turns it off). The device offers HOST_TSO4 only (VirtioNet):
        // IPv6 leaves at the MSS.
        bool offload = vhostUser.Length > 0 && qemu.Length + dgram.Length + vmnet.Length == 0
            && Environment.GetEnvironmentVariable("KIT_NET_NO_OFFLOAD") is not { Length: > 0 };
        using var server = new VpnKitServer(options.ServerOptions(offload ? TcpOffload.Ipv4 : TcpOffload.None), logs);
        var vhostBackends = new List<IDisposable>();
        try
        {
            server.Start();
            if (options.StartUi(server) is { } ui)
            {
                vhostBackends.Add(ui);
            }
            foreach (string v in vhostUser)
            {
                vhostBackends.Add(VhostUserNet.Listen(server, UnixPath(v, "--vhost-user"), offload, logs));
            }
            foreach (string q in qemu)
            {
                server.ListenQemu(UnixPath(q, "--qemu"));
            }
            foreach (string d in dgram)
            {
                server.ListenDgram(UnixPath(d, "--dgram"));
            }
            foreach (string v in vmnet)
            {
                server.ListenVmnet(UnixPath(v, "--vmnet"));
            }
            if (control is not null)
            {
                vhostBackends.Add(new Net.ControlApi(server, control));
            }
        }
        catch (Exception e) when (e is IOException or ArgumentException or System.Net.Sockets.SocketException)
        {
            throw new CliException(e.Message);
        }
        IEnumerable<string> on = qemu.Select(q => $"--qemu {q}").Concat(dgram.Select(d => $"--dgram {d}"))
            .Concat(vmnet.Select(v => $"--vmnet {v}")).Concat(vhostUser.Select(v => $"--vhost-user {v}"))
            .Concat(control is null ? [] : [$"control API unix:{control}"]);
        Console.Error.WriteLine($"kit: vpnkit serving on {string.Join(", ", on)} (gateway 192.168.65.1, MTU {options.Mtu}, ICMP: {server.IcmpMode}); Ctrl-C stops");
        using Supervision ready = Supervision.Ready(parse);
        using var done = new ManualResetEventSlim();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            done.Set();
        };
        using var term = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            done.Set();
        });
        done.Wait();
        foreach (IDisposable b in vhostBackends)
        {
            b.Dispose();
        }
        return 0;
    }

    private static string? ControlPath(string? spec) => spec is null ? null : UnixPath(spec, "--control");

    private static string UnixPath(string spec, string option)
    {
        if (!spec.StartsWith("unix:", StringComparison.Ordinal) || spec.Length == 5)
        {
            throw new CliException($"{option} wants unix:PATH, got '{spec}'");
        }
        return spec[5..];
    }

    private static bool IsRoot()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("Uid:", StringComparison.Ordinal))
                {
                    string[] f = line.Split('\t', StringSplitOptions.RemoveEmptyEntries);
                    return f.Length > 2 && f[2] == "0";
                }
            }
        }
        catch (IOException)
        {
        }
        return false;
    }

    private static void Ip(params string[] args)
    {
        (int code, string err) = RunIp(args);
        if (code != 0)
        {
            throw new CliException($"ip {string.Join(' ', args)}: {err.Trim()}");
        }
    }

    /// <summary>Runs ip(8); returns its exit code and its stderr, or its stdout when <paramref name="standardOutput"/>.</summary>
    internal static (int Code, string Text) RunIp(string[] args, bool standardOutput = false)
    {
        var start = new ProcessStartInfo("ip") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }
        try
        {
            using Process p = Process.Start(start)!;
            Task<string> output = p.StandardOutput.ReadToEndAsync();
            string err = p.StandardError.ReadToEnd();
            p.WaitForExit();
            return (p.ExitCode, standardOutput ? output.Result : err);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (127, $"cannot run ip: {e.Message}");
        }
    }
}
