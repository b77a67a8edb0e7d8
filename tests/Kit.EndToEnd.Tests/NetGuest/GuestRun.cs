using Kit.Testing;

namespace Kit.EndToEnd.Tests.NetGuest;

/// <summary>
/// One boot of the default guest against `kit net serve` (with --pcap), shared by the facts of one test class so
/// each transport costs a single boot. Subclasses choose the link (-netdev stream or dgram).
/// </summary>
public abstract class GuestRun : IAsyncLifetime
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-netguest-");
    private readonly TinyDnsServer _dns = new();
    private readonly TinyHttpServer _http = new();

    public GuestResult Guest { get; private set; } = null!;

    /// <summary>The guest script's own output (between the harness markers).</summary>
    public string Output => Guest.Output;

    public string KitOutput { get; private set; } = "";

    public int KitExitCode { get; private set; }

    public string Tshark { get; private set; } = "";

    public long PcapBytes { get; private set; }

    internal TinyDnsServer Dns => _dns;

    internal TinyHttpServer Http => _http;

    /// <summary>A loopback port nothing listens on (bound once to pick it, then closed).</summary>
    internal int ClosedPort { get; } = PickClosedPort();

    private static int PickClosedPort()
    {
        var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        int port = ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    internal string Section(string name) => GuestNetScript.Section(Output, name);

    /// <summary>Timing line for the test log.</summary>
    public string Timing => $"boot {Guest.BootTime.TotalSeconds:F1} s, whole run {Guest.Elapsed.TotalSeconds:F1} s";

    /// <summary>The `kit net serve` link arguments and the guest's network, given a private directory.</summary>
    private protected abstract (string[] KitArgs, QemuNetwork Network) Link(string dir);

    /// <summary>Anything else the guest's QEMU needs for the link (chardevs, shared memory).</summary>
    private protected virtual void Configure(QemuGuestOptions options, string dir)
    {
    }

    public async ValueTask InitializeAsync()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string pcap = Path.Combine(_dir.FullName, "capture.pcap");
        (string[] kitArgs, QemuNetwork network) = Link(_dir.FullName);
        using KitNetServe kit = await KitNetServe.StartAsync(kitArgs, _dns, pcap, cancel);
        try
        {
            var options = new QemuGuestOptions { Timeout = TimeSpan.FromSeconds(240) }.AddNetwork(network);
            Configure(options, _dir.FullName);
            Guest = await QemuGuest.RunAsync(GuestNetScript.Full(_http.Port, _dns.EndPoint.Port, ClosedPort), options, cancel);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            throw new InvalidOperationException($"guest run failed: {e.Message}\n--- kit net serve ---\n{Text.Tail(kit.Output, 3000)}", e);
        }
        ProcessResult stopped = await kit.StopAsync();
        KitExitCode = stopped.ExitCode;
        KitOutput = stopped.Output;
        PcapBytes = File.Exists(pcap) ? new FileInfo(pcap).Length : -1;
        if (PcapBytes > 0)
        {
            ProcessResult t = await ProcessRunner.RunAsync("tshark", ["-n", "-r", pcap], timeout: TimeSpan.FromSeconds(60), cancellationToken: cancel);
            Tshark = $"exit {t.ExitCode}\n{t.StandardOutput}\n{Text.Tail(t.StandardError, 2000)}";
        }
    }

    public ValueTask DisposeAsync()
    {
        _dns.Dispose();
        _http.Dispose();
        try
        {
            _dir.Delete(recursive: true);
        }
        catch (IOException)
        {
        }
        GC.SuppressFinalize(this);
        return ValueTask.CompletedTask;
    }
}

/// <summary>The guest on <c>-netdev stream</c> to `kit net serve --qemu unix:PATH`.</summary>
public sealed class StreamGuestRun : GuestRun
{
    private protected override (string[], QemuNetwork) Link(string dir)
    {
        string sock = Path.Combine(dir, "qemu.sock");
        return (["--qemu", "unix:" + sock], QemuNetwork.Stream(sock, "52:54:00:6b:00:01"));
    }
}

/// <summary>
/// The guest on <c>-netdev dgram</c>: kit binds the --dgram path and learns QEMU's address from its first
/// datagram (src/VpnKit/Links/StreamLink.cs DgramLink); QEMU binds its own path and sends to kit's.
/// </summary>
public sealed class DgramGuestRun : GuestRun
{
    private protected override (string[], QemuNetwork) Link(string dir)
    {
        string kitPath = Path.Combine(dir, "kit.dgram");
        string qemuPath = Path.Combine(dir, "qemu.dgram");
        return (["--dgram", "unix:" + kitPath], QemuNetwork.Dgram(qemuPath, kitPath, "52:54:00:6b:00:02"));
    }
}

/// <summary>
/// The guest on <c>-netdev stream</c> with `kit net serve --mtu 65520`: the DHCP MTU option sets the guest's link,
/// so the fetch crosses the gateway in 64 KiB frames.
/// </summary>
public sealed class JumboStreamGuestRun : GuestRun
{
    private protected override (string[], QemuNetwork) Link(string dir)
    {
        string sock = Path.Combine(dir, "qemu.sock");
        return (["--qemu", "unix:" + sock, "--mtu", "65520"], QemuNetwork.Stream(sock, "52:54:00:6b:00:03"));
    }
}

/// <summary>
/// The guest's virtio-net served out of process by `kit net serve --vhost-user unix:PATH` (HyperKit's virtio-net
/// model behind Kit's vhost-user backend), QEMU being the vhost-user frontend on guest RAM from a shared memfd.
/// </summary>
public sealed class VhostUserGuestRun : GuestRun
{
    private protected override (string[], QemuNetwork) Link(string dir)
    {
        string sock = Path.Combine(dir, "vhost-net.sock");
        return (["--vhost-user", "unix:" + sock], QemuNetwork.VhostUser("vhu0", "52:54:00:6b:00:04"));
    }

    private protected override void Configure(QemuGuestOptions options, string dir)
    {
        options.SharedMemory = true;
        options.ExtraArguments.AddRange(["-chardev", $"socket,id=vhu0,path={Path.Combine(dir, "vhost-net.sock").Replace(",", ",,", StringComparison.Ordinal)}"]);
    }
}
