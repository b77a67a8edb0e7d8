using System.CommandLine;
using System.Net.Sockets;
using System.Text;
using Kit.Cli.Vm;
using Kit.DataKit;
using Kit.HyperKit.Vm;
using Kit.NineP.Server;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit demo`: the three parts together in one foreground run (what `kit up` was before machines). The default guest boots under HyperKit (or, without
/// hardware KVM, on QEMU's software CPU with Kit's devices over vhost-user) with VPNKit in the same process as its
/// network and DataKit (also in this process) mounted at /datakit over virtio-9p (under tcg: 9P over TCP through VPNKit); the demo
/// in the guest takes a DHCP lease, resolves the host through the DNS forwarder, and commits what it learned into
/// DataKit. With a terminal on stdin a shell follows; otherwise the guest powers off and the exit code is the VM's.
/// Host tools reach the same database over 9P on a 0600 Unix socket (<see cref="HostToolsSocket"/>) while it runs.
/// </summary>
internal static class UpCommand
{
    /// <summary>The virtio-9p tag the guest mounts DataKit by.</summary>
    public const string DataKitTag = "datakit";

    public static Command Create()
    {
        var git = new Option<string?>("--git")
        {
            HelpName = "DIR",
            Description = "Git repository holding the DataKit store (created if missing). Default: as kit data serve.",
        };
        var listen = new Option<string[]>("--listen-9p")
        {
            HelpName = "ADDRESS",
            Description = "Also serve DataKit to host tools at tcp://HOST:PORT or unix:PATH (repeatable). Default: unix:$XDG_RUNTIME_DIR/kit/datakit.sock (0600; else /run/kit or ~/.local/share/kit).",
        };
        var cpus = new Option<int>("--cpus", "-c") { HelpName = "N", Description = "Number of vCPUs.", DefaultValueFactory = _ => 2 };
        var memory = new Option<string>("--memory", "-m") { HelpName = "SIZE", Description = "Guest RAM (K/M/G suffix).", DefaultValueFactory = _ => "512M" };
        var dnsUpstream = new Option<string[]>("--dns-upstream") { HelpName = "IP:PORT", Description = "DNS upstream IP:PORT for the guest's forwarder (repeatable; default: the host's resolv.conf)." };
        var publish = new Option<string[]>("--publish") { HelpName = "HOSTPORT:GUESTPORT", Description = "Forward host 127.0.0.1:HOSTPORT to the guest's GUESTPORT (HOSTPORT:GUESTPORT[/udp], repeatable)." };
        var consoleLog = new Option<FileInfo?>("--console-log") { HelpName = "FILE", Description = "Also write the serial console to FILE." };
        var accel = new Option<string>("--accel") { HelpName = "auto|kvm|tcg", Description = Accelerators.OptionHelp, DefaultValueFactory = _ => "auto" };
        var up = new Command("demo", "Boot the busybox guest once with VPNKit networking and DataKit mounted at /datakit, and run the three parts' demo (then a shell, when stdin is a terminal).")
        {
            git, listen, cpus, memory, dnsUpstream, publish, consoleLog, accel,
        };
        up.SetAction(parse => Run(
            parse.GetValue(git), parse.GetValue(listen) ?? [], parse.GetValue(cpus), parse.GetValue(memory) ?? "512M",
            parse.GetValue(dnsUpstream) ?? [], parse.GetValue(publish) ?? [], parse.GetValue(consoleLog), Accelerators.Parse(parse.GetValue(accel))));
        return up;
    }

    private static int Run(string? gitPath, string[] listen, int cpus, string memoryText, string[] dnsUpstream, string[] publish, FileInfo? consoleLog, Accelerator requested)
    {
        if (!VmCommand.TryParseSize(memoryText, out ulong memory))
        {
            throw new CliException($"--memory: cannot parse \"{memoryText}\" (use e.g. 512M or 1G)");
        }
        Accelerator accel = Accelerators.Resolve(requested);
        (string kernel, string initrd) = GuestCommand.Ensure(null);

        string store = gitPath ?? DataCommand.DefaultStore();
        // A fresh private directory (mkdtemp, 0700): a predictable name in a shared directory could be created first
        // by another local user, who would then own the socket the guest's DataKit goes through.
        string runtime = Directory.CreateTempSubdirectory("kit-up-").FullName;
        string socket = Path.Combine(runtime, "datakit.sock");
        using ILoggerFactory logs = KitLogging.CreateFactory();
        DataKitServer data;
        try
        {
            NativeGit.Prepare();
            data = new DataKitServer(store, logs.CreateLogger("datakit"));
        }
        catch (LibGit2Sharp.LibGit2SharpException e)
        {
            throw new CliException($"cannot open git repository {store}: {e.Message}");
        }
        try
        {
            // Under kvm the guest reaches DataKit through Kit's virtio-9p, relayed to a private socket. QEMU's virtio-9p
            // cannot relay, so under tcg the guest mounts it over TCP through VPNKit: 192.168.65.2 is the host's
            // loopback, where DataKit listens on a port of its own for the guest.
            string datakitMount;
            if (accel == Accelerator.Kvm)
            {
                data.Listen(Address($"unix:{socket}"));
                datakitMount = "virtio";
            }
            else
            {
                var guestPort = (System.Net.IPEndPoint)data.Listen(Address("tcp://127.0.0.1:0"));
                datakitMount = $"tcp:{guestPort.Port}";
            }
            ServeHostTools(data, listen);
            Console.Error.WriteLine($"kit demo: DataKit store {store}; booting {Path.GetFileName(kernel)} with {cpus} vCPUs and {memoryText} (VPNKit in-process, --accel {accel.ToString().ToLowerInvariant()})");
            bool interactive = !Console.IsInputRedirected;
            var spec = new VmSpec
            {
                Kernel = new FileInfo(kernel),
                Initrd = new FileInfo(initrd),
                Cmdline = $"{VmCommand.DefaultCmdline} quiet no_timer_check kit.datakit={datakitMount} kit.cmd={Convert.ToBase64String(Encoding.UTF8.GetBytes(DemoScript))}"
                    + (interactive ? " kit.shell=1" : ""),
                MemoryBytes = memory,
                Cpus = cpus,
                ConsoleLog = consoleLog,
                Net = "vpnkit",
                NetOptions = GatewaySettings.Parse(1500, dnsUpstream, publish, null) with { BlockMetadata = true }, // docs/security.md
                Accel = accel,
            };
            if (accel == Accelerator.Kvm)
            {
                spec.Shares.Add(new ShareOptions(DataKitTag, $"unix:{socket}"));
            }
            return VmLauncher.Run(spec);
        }
        finally
        {
            data.DisposeAsync().AsTask().GetAwaiter().GetResult();
            Directory.Delete(runtime, recursive: true);
        }
    }

    /// <summary>
    /// Host tools' listeners: the ones asked for (errors are fatal), or else a Unix socket only this user can open
    /// (<see cref="HostToolsSocket"/>). Not tcp://127.0.0.1:5640 by default: any local user could connect to that and
    /// read or rewrite the store; <c>--listen-9p tcp://127.0.0.1:5640</c> still offers it.
    /// </summary>
    private static void ServeHostTools(DataKitServer data, string[] listen)
    {
        if (listen.Length == 0)
        {
            string path = HostToolsSocket();
            try
            {
                data.Listen(Address($"unix:{path}"));
                if (OperatingSystem.IsLinux())
                {
                    File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite); // 0600, in a 0700 directory
                }
                Console.Error.WriteLine($"kit demo: host tools reach DataKit at unix:{path}");
            }
            catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"kit demo: DataKit not served on unix:{path} ({e.Message}); the guest still has it");
            }
            return;
        }
        foreach (string text in listen)
        {
            try
            {
                data.Listen(Address(text));
            }
            catch (Exception e) when (e is SocketException or IOException)
            {
                throw new CliException($"cannot listen on {text}: {e.Message}");
            }
        }
    }

    /// <summary>
    /// <c>$XDG_RUNTIME_DIR/kit/datakit.sock</c>, else <c>/run/kit/datakit.sock</c> as root, else under the user's data
    /// directory (<c>~/.local/share/kit/datakit.sock</c>): never a predictable name in a shared directory such as /tmp,
    /// where another user could create it first. The <c>kit</c> directory is made 0700.
    /// </summary>
    internal static string HostToolsSocket()
    {
        string? xdg = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        string dir = !string.IsNullOrEmpty(xdg) ? Path.Combine(xdg, "kit")
            : Environment.UserName == "root" ? "/run/kit"
            : Path.GetDirectoryName(DataCommand.DefaultStore())!;
        if (OperatingSystem.IsLinux())
        {
            // 0700 also when it existed: the socket is reachable between bind and its chmod only through this directory.
            const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
            Directory.CreateDirectory(dir, Private);
            File.SetUnixFileMode(dir, Private);
        }
        return Path.Combine(dir, "datakit.sock");
    }

    private static ListenAddress Address(string text) =>
        ListenAddress.TryParse(text, out ListenAddress? a, out string error) ? a! : throw new CliException($"--listen-9p: {error}");

    /// <summary>
    /// The guest side of the demo (busybox sh, run by the default guest's /init from kit.cmd). Each step prints one
    /// "kit up:" line; a failing step ends the script with its own exit code, which the VM's exit reports.
    /// </summary>
    private const string DemoScript = """
        say() { echo "kit demo: $*"; }
        udhcpc -i eth0 -n -q -t 5 -T 2 >/dev/null 2>&1 || { say "no DHCP lease on eth0"; exit 20; }
        say "eth0 $(ip -4 -o addr show eth0 | awk '{print $4}') via $(ip route | awk '/^default/ {print $3}'), MTU $(cat /sys/class/net/eth0/mtu)"
        say "host.docker.internal is $(nslookup host.docker.internal 2>/dev/null | awk '/^Address/ && $NF !~ /:53$/ { if ($NF ~ /:/) six = six ", " $NF; else four = four ? four ", " $NF : $NF } END { print four six }')"
        mkdir -p /datakit
        port=$(sed -n 's/.*kit\.datakit=tcp:\([0-9]*\).*/\1/p' /proc/cmdline)
        if [ -n "$port" ]; then
          mount -t 9p -o trans=tcp,port=$port,version=9p2000.L,msize=262144 192.168.65.2 /datakit
        else
          mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 datakit /datakit
        fi || { say "cannot mount DataKit"; exit 21; }
        [ -d /datakit/branch/master ] || mkdir /datakit/branch/master || exit 22
        t=/datakit/branch/master/transactions/kit-up-$$
        mkdir "$t" && mkdir -p "$t/rw/vm" || exit 23
        ip -4 -o addr show eth0 | awk '{print $4}' >"$t/rw/vm/address"
        uname -r >"$t/rw/vm/kernel"
        grep -c ^processor /proc/cpuinfo >"$t/rw/vm/cpus"
        echo -n "kit demo: the guest booted and recorded its network" >"$t/msg"
        echo commit >"$t/ctl" || { say "commit failed"; exit 24; }
        say "DataKit is mounted at /datakit; master is now $(cat /datakit/branch/master/head)"
        if grep -q kit.shell=1 /proc/cmdline; then
          say "exit the shell to power off"
          setsid cttyhack sh -l
        fi
        exit 0
        """;
}
