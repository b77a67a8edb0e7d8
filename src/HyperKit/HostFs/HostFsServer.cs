using Kit.NineP.Server;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.HyperKit.HostFs;

/// <summary>
/// Serves a host directory over a byte stream (a TCP or Unix socket, a pipe) with NineP's own stream transport
/// (<see cref="NinePConnection"/>): the same framing, tags and protocol-violation rules as every 9P server here. The
/// host backend's operations complete synchronously, so each request is answered before the next frame is read.
/// </summary>
public static class HostFsServer
{
    public static async Task ServeStreamAsync(Stream stream, HostFsOptions options, CancellationToken ct = default, ILogger? logger = null)
    {
        var dispatcher = new NinePDispatcher<HostFid>(new HostFsBackend(options), options.MaxMessageSize, VersionNegotiation.MinMessageSize, options.MaxFids, logger);
        await new NinePConnection(stream, dispatcher, 1024, logger ?? NullLogger.Instance).RunAsync(ct).ConfigureAwait(false);
    }
}
