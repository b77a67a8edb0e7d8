using System.Net.Sockets;
using System.Text.Json;
using Kit.Linux;

namespace Kit.Cli.Machines;

/// <summary>
/// The daemon's control socket (0600, in the 0700 runtime directory): one JSON request line per connection, one JSON
/// answer line. A line that is not a request gets an error answer; the daemon goes on.
/// </summary>
internal sealed class ControlServer : IDisposable
{
    private readonly Socket _listener;
    private readonly UnixSocketFile.Binding _file;
    private readonly Func<ControlRequest, Task<ControlReply>> _handle;

    public ControlServer(string path, Func<ControlRequest, Task<ControlReply>> handle)
    {
        _handle = handle;
        _listener = UnixSocketFile.Bind(path, SocketType.Stream, out _file);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        _listener.Listen(16);
        _ = AcceptAsync();
    }

    private async Task AcceptAsync()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                return;
            }
            _ = ServeAsync(client);
        }
    }

    private async Task ServeAsync(Socket client)
    {
        using (client)
        await using (var stream = new NetworkStream(client, ownsSocket: false))
        {
            ControlReply reply;
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                string? line = await ControlClient.ReadLineAsync(stream, cts.Token).ConfigureAwait(false);
                ControlRequest? request = line is null ? null : JsonSerializer.Deserialize(line, ControlJson.Default.ControlRequest);
                reply = request is null ? new ControlReply(false, "empty request") : await _handle(request).ConfigureAwait(false);
            }
            catch (Exception e) when (e is JsonException or IOException or OperationCanceledException)
            {
                reply = new ControlReply(false, $"bad request: {e.Message}");
            }
            try
            {
                byte[] bytes = JsonSerializer.SerializeToUtf8Bytes(reply, ControlJson.Default.ControlReply);
                await stream.WriteAsync(bytes).ConfigureAwait(false);
                await stream.WriteAsync("\n"u8.ToArray()).ConfigureAwait(false);
            }
            catch (IOException)
            {
            }
        }
    }

    public void Dispose()
    {
        _listener.Dispose();
        _file.Dispose();
    }
}
