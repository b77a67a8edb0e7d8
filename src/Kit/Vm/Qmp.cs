using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace Kit.Cli.Vm;

/// <summary>
/// The QEMU Machine Protocol on kit's end of a socketpair (QEMU's docs/interop/qmp-spec.rst): newline-separated JSON,
/// a greeting, <c>qmp_capabilities</c> to leave negotiation, then events. Kit needs only how the guest ended
/// (SHUTDOWN's reason, GUEST_PANICKED) and ways to end it (quit, or the ACPI power button).
/// </summary>
internal sealed class Qmp : IDisposable
{
    /// <summary>A QMP line longer than this is a broken peer (events are a few hundred bytes).</summary>
    private const int MaxLine = 64 * 1024;

    private readonly Socket _socket;
    private readonly Thread _reader;
    private volatile string? _shutdownReason;
    private volatile bool _panicked;

    public Qmp(Socket socket)
    {
        _socket = socket;
        _reader = new Thread(Read) { IsBackground = true, Name = "kit-qmp" };
        _reader.Start();
    }

    /// <summary>SHUTDOWN's reason (guest-shutdown, guest-reset, guest-panic, host-signal, ...), once it came.</summary>
    public string? ShutdownReason => _shutdownReason;

    /// <summary>GUEST_PANICKED came (a pvpanic device reported a panic).</summary>
    public bool Panicked => _panicked;

    /// <summary>Asks QEMU to exit now (the guest is not asked).</summary>
    public void Quit() => Send("""{"execute":"quit"}""");

    /// <summary>Presses the ACPI power button (system_powerdown): the guest is asked to shut down.</summary>
    public void PowerDown() => Send("""{"execute":"system_powerdown"}""");

    private void Send(string command)
    {
        try
        {
            _socket.Send(Encoding.UTF8.GetBytes(command + "\n"));
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    private void Read()
    {
        try
        {
            using var stream = new NetworkStream(_socket, ownsSocket: false);
            var line = new List<byte>(512);
            Span<byte> buffer = stackalloc byte[4096];
            bool negotiated = false;
            while (true)
            {
                int n = stream.Read(buffer);
                if (n == 0)
                {
                    return;
                }
                foreach (byte b in buffer[..n])
                {
                    if (b != '\n')
                    {
                        if (line.Count >= MaxLine)
                        {
                            return;
                        }
                        line.Add(b);
                        continue;
                    }
                    if (!negotiated)
                    {
                        // The greeting: {"QMP": {...}}. Capabilities negotiation ends with qmp_capabilities.
                        Send("""{"execute":"qmp_capabilities"}""");
                        negotiated = true;
                    }
                    else
                    {
                        OnMessage(line.ToArray());
                    }
                    line.Clear();
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
        }
    }

    private void OnMessage(byte[] json)
    {
        try
        {
            using JsonDocument doc = JsonDocument.Parse(json);
            if (!doc.RootElement.TryGetProperty("event", out JsonElement name))
            {
                return;
            }
            switch (name.GetString())
            {
                case "SHUTDOWN":
                    _shutdownReason = doc.RootElement.TryGetProperty("data", out JsonElement data) && data.TryGetProperty("reason", out JsonElement reason)
                        ? reason.GetString() ?? "unknown" : "unknown";
                    break;
                case "GUEST_PANICKED":
                    _panicked = true;
                    break;
            }
        }
        catch (JsonException)
        {
        }
    }

    public void Dispose() => _socket.Dispose();
}
