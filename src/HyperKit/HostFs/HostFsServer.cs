using System.Buffers;
using System.Buffers.Binary;
using Kit.NineP.Protocol;

namespace Kit.HyperKit.HostFs;

/// <summary>
/// Serves a <see cref="HostFsSession"/> over a byte stream (a TCP or Unix socket, a pipe): 9P frames
/// size[4] type[1] tag[2] body, one request at a time. A frame whose size is below the header or above the
/// negotiated msize ends the connection (the stream cannot be resynchronised); a frame that is well framed but
/// malformed gets an Rlerror.
/// </summary>
public static class HostFsServer
{
    public static async Task ServeStreamAsync(Stream stream, HostFsOptions options, CancellationToken ct = default)
    {
        using var session = new HostFsSession(options);
        byte[] header = new byte[4];
        byte[] request = ArrayPool<byte>.Shared.Rent(8192);
        byte[] reply = ArrayPool<byte>.Shared.Rent(8192);
        try
        {
            while (!ct.IsCancellationRequested)
            {
                try
                {
                    await stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
                }
                catch (EndOfStreamException)
                {
                    return;
                }
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(header);
                if (size < P9.HeaderSize || size > Math.Max(session.MessageSize, 8192))
                {
                    return;
                }
                if (request.Length < size)
                {
                    ArrayPool<byte>.Shared.Return(request);
                    request = ArrayPool<byte>.Shared.Rent((int)size);
                }
                header.CopyTo(request, 0);
                try
                {
                    await stream.ReadExactlyAsync(request.AsMemory(4, (int)size - 4), ct).ConfigureAwait(false);
                }
                catch (EndOfStreamException)
                {
                    return; // truncated frame: the peer went away mid-message
                }
                int need = (int)Math.Max(session.MessageSize, 8192);
                if (reply.Length < need)
                {
                    ArrayPool<byte>.Shared.Return(reply);
                    reply = ArrayPool<byte>.Shared.Rent(need);
                }
                int n = session.Handle(request.AsSpan(0, (int)size), reply);
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
            ArrayPool<byte>.Shared.Return(request);
            ArrayPool<byte>.Shared.Return(reply);
        }
    }
}
