using System.Buffers;
using Kit.NineP.Server;

namespace Kit.HyperKit.HostFs;

/// <summary>
/// Serves a <see cref="HostFsSession"/> over a byte stream (a TCP or Unix socket, a pipe), one request at a time.
/// Framing is NineP's <see cref="NinePFrameReader"/>, the same as every 9P server here: a frame whose size is below
/// the header or above the negotiated msize ends the connection; a frame that is well framed but malformed gets an
/// Rlerror.
/// </summary>
public static class HostFsServer
{
    public static async Task ServeStreamAsync(Stream stream, HostFsOptions options, CancellationToken ct = default)
    {
        using var session = new HostFsSession(options);
        using var frames = new NinePFrameReader(stream);
        byte[] reply = ArrayPool<byte>.Shared.Rent(8192);
        try
        {
            while (!ct.IsCancellationRequested)
            {
                // Before Tversion the session's msize is its ceiling; 8 KiB always fits a Tversion.
                uint limit = Math.Max(session.MessageSize, 8192);
                if (await frames.ReadAsync(limit, ct).ConfigureAwait(false) != FrameStatus.Frame)
                {
                    return;
                }
                if (reply.Length < limit)
                {
                    ArrayPool<byte>.Shared.Return(reply);
                    reply = ArrayPool<byte>.Shared.Rent((int)limit);
                }
                int n = session.Handle(frames.Frame.Span, reply);
                if (n > 0)
                {
                    await stream.WriteAsync(reply.AsMemory(0, n), ct).ConfigureAwait(false);
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(reply);
        }
    }
}
