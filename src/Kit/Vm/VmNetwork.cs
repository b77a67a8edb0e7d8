using Kit.Cli.Commands;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.VpnKit;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Vm;

/// <summary>
/// `kit vm run --net none|vpnkit|vmnet:PATH|tap:NAME`: builds the virtio-net backend and whatever it needs (an
/// in-process VPNKit server). Disposing it stops them.
/// </summary>
internal sealed class VmNetwork : IDisposable
{
    private readonly ILoggerFactory? _logs;
    private readonly VpnKitServer? _server;
    private IDisposable? _ui;

    private VmNetwork(INetBackend? backend, VpnKitServer? server, ILoggerFactory? logs)
    {
        Backend = backend;
        _server = server;
        _logs = logs;
    }

    /// <summary>Null for --net none.</summary>
    public INetBackend? Backend { get; }

    /// <summary>The in-process VPNKit of --net vpnkit (for its port publishing); null otherwise.</summary>
    public VpnKitServer? Server => _server;

    public static VmNetwork Create(string spec, GatewaySettings vpnkit)
    {
        if (spec == "none")
        {
            return new VmNetwork(null, null, null);
        }
        if (spec == "vpnkit")
        {
            ILoggerFactory logs = KitLogging.CreateFactory();
            bool offload = Environment.GetEnvironmentVariable("KIT_NET_NO_OFFLOAD") is not { Length: > 0 };
            var server = new VpnKitServer(vpnkit.ServerOptions(offload ? TcpOffload.Ipv4 : TcpOffload.None), logs);
            IDisposable? ui;
            try
            {
                server.Start();
                ui = vpnkit.StartUi(server);
            }
            catch (Exception e) when (e is IOException or System.Net.Sockets.SocketException)
            {
                server.Dispose();
                logs.Dispose();
                throw new CliException($"--net vpnkit: {e.Message}");
            }
            return new VmNetwork(new VpnKitNetBackend(server, offload), server, logs) { _ui = ui };
        }
        if (spec.StartsWith("vmnet:", StringComparison.Ordinal) && spec.Length > 6)
        {
            string path = spec[6..];
            if (path.StartsWith("unix:", StringComparison.Ordinal))
            {
                path = path[5..];
            }
            try
            {
                return new VmNetwork(Vmn3tBackend.Connect(path, Guid.NewGuid(), TimeSpan.FromSeconds(10)), null, null);
            }
            catch (IOException e)
            {
                throw new CliException($"--net {spec}: {e.Message}");
            }
        }
        if (spec.StartsWith("tap:", StringComparison.Ordinal) && spec.Length > 4)
        {
            try
            {
                return new VmNetwork(TapBackend.Open(spec[4..], vpnkit.Mtu), null, null);
            }
            catch (Exception e) when (e is IOException or ArgumentException)
            {
                throw new CliException($"--net {spec}: {e.Message}");
            }
        }
        throw new CliException($"--net wants none, vpnkit, vmnet:PATH or tap:NAME, got '{spec}'");
    }

    public void Dispose()
    {
        _ui?.Dispose();
        Backend?.Dispose();
        _server?.Dispose();
        _logs?.Dispose();
    }
}
