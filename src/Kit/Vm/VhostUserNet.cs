using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.VhostUser;
using Kit.VpnKit;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Vm;

/// <summary>
/// VPNKit as a vhost-user-net backend (`kit net serve --vhost-user unix:PATH`): HyperKit's virtio-net device model,
/// joined to the in-process VPNKit server by <see cref="VpnKitNetBackend"/> exactly as under `kit vm run --net vpnkit`,
/// served to an out-of-process VMM by <see cref="VhostUserBackend"/>. The frontend owns the device's configuration
/// space (QEMU's virtio-net keeps its own MAC and status), so the MAC given here only names the link.
/// </summary>
internal sealed class VhostUserNet : IDisposable
{
    private readonly VirtioNet _device;
    private readonly VhostUserBackend _backend;

    private VhostUserNet(VirtioNet device, VhostUserBackend backend)
    {
        _device = device;
        _backend = backend;
    }

    public static VhostUserNet Listen(VpnKitServer server, string path, bool offload, ILoggerFactory logs)
    {
        var device = new VirtioNet(new VpnKitNetBackend(server, offload), NetMacs.Random());
        var backend = new VhostUserBackend(device, logs.CreateLogger("vhost-user-net"));
        try
        {
            backend.Listen(path);
        }
        catch
        {
            backend.Dispose();
            device.Dispose();
            throw;
        }
        return new VhostUserNet(device, backend);
    }

    public void Dispose()
    {
        _backend.Dispose();
        _device.Dispose();
    }
}
