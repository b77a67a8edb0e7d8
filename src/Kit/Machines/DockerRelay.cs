using System.Net.Sockets;
using Kit.Agent.Protocol;
using Kit.Linux;

namespace Kit.Cli.Machines;

/// <summary>
/// The guest's dockerd socket on the host: a 0600 Unix socket in the machine's runtime directory; each connection is
/// carried over vsock to the agent, which connects it to dockerd's socket in the guest (ForwardUnix). Whoever can open it
/// is root in the guest, as with any docker socket: hence 0600 in a 0700 directory, never a TCP port.
/// </summary>
internal sealed class DockerRelay : IDisposable
{
    private readonly Socket _listener;
    private readonly UnixSocketFile.Binding _file;
    private readonly Func<CancellationToken, Task<AgentClient>> _agent;
    private readonly string _guestPath;
    private readonly Action<string> _say;
    private readonly CancellationTokenSource _stop = new();

    private DockerRelay(string path, Func<CancellationToken, Task<AgentClient>> agent, string guestPath, Action<string> say)
    {
        _agent = agent;
        _guestPath = guestPath;
        _say = say;
        _listener = UnixSocketFile.Bind(path, SocketType.Stream, out _file);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _listener.Listen(64);
    }

    public static DockerRelay Listen(string path, Func<CancellationToken, Task<AgentClient>> agent, string guestPath, Action<string> say)
    {
        var relay = new DockerRelay(path, agent, guestPath, say);
        _ = relay.AcceptAsync();
        return relay;
    }

    private async Task AcceptAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
            {
                return;
            }
            _ = RelayAsync(client);
        }
    }

    private async Task RelayAsync(Socket client)
    {
        using (client)
        {
            AgentClient? agent = null;
            Stream guest;
            try
            {
                agent = await _agent(_stop.Token).ConfigureAwait(false);
                guest = await agent.ForwardUnixAsync(_guestPath, _stop.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or SocketException or AgentProtocolException or OperationCanceledException)
            {
                _say($"docker socket: cannot reach {_guestPath} in the guest: {e.Message}");
                if (agent is not null)
                {
                    await agent.DisposeAsync().ConfigureAwait(false);
                }
                return;
            }
            await using (agent)
            await using (guest)
            await using (var host = new NetworkStream(client, ownsSocket: false))
            {
                await Splice.BothWaysAsync(host, client, guest, _stop.Token).ConfigureAwait(false);
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        _file.Dispose();
    }
}

/// <summary>Copies two streams into each other until both directions end, passing each end of file on as a half-close.</summary>
internal static class Splice
{
    public static async Task BothWaysAsync(Stream host, Socket hostSocket, Stream guest, CancellationToken ct)
    {
        Task up = CopyAsync(host, guest, () => HalfClose(guest), ct);
        Task down = CopyAsync(guest, host, () => hostSocket.Shutdown(SocketShutdown.Send), ct);
        await Task.WhenAll(up, down).ConfigureAwait(false);
    }

    private static void HalfClose(Stream stream)
    {
        if (stream is NetworkStream n)
        {
            n.Socket.Shutdown(SocketShutdown.Send);
        }
        else
        {
            stream.Dispose();
        }
    }

    private static async Task CopyAsync(Stream from, Stream to, Action done, CancellationToken ct)
    {
        try
        {
            await from.CopyToAsync(to, 64 * 1024, ct).ConfigureAwait(false);
            await to.FlushAsync(ct).ConfigureAwait(false);
            done();
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }
}
