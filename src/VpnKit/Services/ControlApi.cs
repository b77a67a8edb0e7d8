using System.Globalization;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Kit.Linux;

namespace Kit.VpnKit.Services;

/// <summary>
/// A small HTTP/1.1 + JSON control API on a Unix socket for port forwards at run time:
/// <c>GET /forwards</c> lists them, <c>POST /forwards</c> with <c>{"proto":"tcp","hostPort":8080,"guestPort":80}</c>
/// adds one (201; 400/409 with <c>{"message":...}</c>), <c>DELETE /forwards/{proto}/{hostPort}</c> removes one
/// (204; 404). One request per connection; requests are bounded in size.
/// </summary>
public sealed class ControlApi : IDisposable
{
    private const int MaxRequest = 16 * 1024;
    private readonly VpnKitServer _server;
    private readonly Socket _listener;
    private readonly UnixSocketFile.Binding _socketFile;

    public ControlApi(VpnKitServer server, string path)
    {
        _server = server;
        _listener = UnixSocketFile.Bind(path, SocketType.Stream, out _socketFile);
        try
        {
            _listener.Listen(16);
        }
        catch
        {
            _listener.Dispose();
            _socketFile.Dispose();
            throw;
        }
        _ = AcceptLoopAsync();
    }

    private async Task AcceptLoopAsync()
    {
        try
        {
            while (true)
            {
                Socket s = await _listener.AcceptAsync().ConfigureAwait(false);
                _ = ServeAsync(s);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    private async Task ServeAsync(Socket s)
    {
        using (s)
        {
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                byte[] buf = new byte[MaxRequest];
                int got = 0;
                int headerEnd = -1;
                int contentLength = 0;
                while (got < buf.Length)
                {
                    int n = await s.ReceiveAsync(buf.AsMemory(got), SocketFlags.None, cts.Token).ConfigureAwait(false);
                    if (n == 0)
                    {
                        break;
                    }
                    got += n;
                    if (headerEnd < 0)
                    {
                        headerEnd = buf.AsSpan(0, got).IndexOf("\r\n\r\n"u8);
                        if (headerEnd >= 0)
                        {
                            contentLength = ContentLength(Encoding.ASCII.GetString(buf, 0, headerEnd));
                        }
                    }
                    if (headerEnd >= 0 && got >= headerEnd + 4 + contentLength)
                    {
                        break;
                    }
                }
                (int status, string body) = headerEnd < 0
                    ? (400, Message("malformed request"))
                    : Handle(Encoding.ASCII.GetString(buf, 0, headerEnd), buf.AsSpan(headerEnd + 4, Math.Max(0, Math.Min(contentLength, got - headerEnd - 4))));
                string reason = status switch { 200 => "OK", 201 => "Created", 204 => "No Content", 404 => "Not Found", 405 => "Method Not Allowed", 409 => "Conflict", _ => "Bad Request" };
                byte[] payload = Encoding.UTF8.GetBytes(body);
                string head = string.Create(CultureInfo.InvariantCulture,
                    $"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {payload.Length}\r\nConnection: close\r\n\r\n");
                await s.SendAsync(Encoding.ASCII.GetBytes(head), SocketFlags.None).ConfigureAwait(false);
                if (payload.Length > 0)
                {
                    await s.SendAsync(payload, SocketFlags.None).ConfigureAwait(false);
                }
            }
            catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
            {
            }
        }
    }

    private static int ContentLength(string headers)
    {
        foreach (string line in headers.Split("\r\n"))
        {
            if (line.StartsWith("Content-Length:", StringComparison.OrdinalIgnoreCase)
                && int.TryParse(line.AsSpan(15).Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int n))
            {
                return Math.Min(n, MaxRequest);
            }
        }
        return 0;
    }

    private (int Status, string Body) Handle(string headers, ReadOnlySpan<byte> body)
    {
        string[] requestLine = headers.Split("\r\n")[0].Split(' ');
        if (requestLine.Length < 2)
        {
            return (400, Message("malformed request line"));
        }
        string method = requestLine[0];
        string path = requestLine[1];
        if (path == "/forwards" && method == "GET")
        {
            return (200, List());
        }
        if (path == "/forwards" && method == "POST")
        {
            return Add(body);
        }
        if (path.StartsWith("/forwards/", StringComparison.Ordinal) && method == "DELETE")
        {
            string[] parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 3 && parts[1] is "tcp" or "udp" && int.TryParse(parts[2], NumberStyles.None, CultureInfo.InvariantCulture, out int port))
            {
                return _server.RemovePublish(parts[1] == "udp", port) ? (204, "") : (404, Message($"no {parts[1]} forward on port {port}"));
            }
            return (400, Message("use DELETE /forwards/{tcp|udp}/{hostPort}"));
        }
        return path.StartsWith("/forwards", StringComparison.Ordinal) ? (405, Message("method not allowed")) : (404, Message("not found"));
    }

    private (int, string) Add(ReadOnlySpan<byte> body)
    {
        string proto;
        int hostPort;
        int guestPort;
        try
        {
            var reader = new Utf8JsonReader(body);
            using JsonDocument doc = JsonDocument.ParseValue(ref reader);
            JsonElement root = doc.RootElement;
            proto = root.TryGetProperty("proto", out JsonElement p) ? p.GetString() ?? "tcp" : "tcp";
            hostPort = root.GetProperty("hostPort").GetInt32();
            guestPort = root.GetProperty("guestPort").GetInt32();
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return (400, Message("body must be {\"proto\":\"tcp|udp\",\"hostPort\":N,\"guestPort\":M}"));
        }
        if (proto is not ("tcp" or "udp") || hostPort is < 1 or > 65535 || guestPort is < 1 or > 65535)
        {
            return (400, Message("proto must be tcp or udp and ports 1-65535"));
        }
        var spec = new PortPublish(hostPort, guestPort, proto == "udp");
        string? error = _server.AddPublish(spec);
        return error is null ? (201, Json(spec)) : (409, Message(error));
    }

    private string List()
    {
        var sb = new StringBuilder("[");
        foreach (PortPublish p in _server.Publishes)
        {
            if (sb.Length > 1)
            {
                sb.Append(',');
            }
            sb.Append(Json(p));
        }
        return sb.Append(']').ToString();
    }

    private static string Json(PortPublish p)
        => string.Create(CultureInfo.InvariantCulture, $"{{\"proto\":\"{(p.Udp ? "udp" : "tcp")}\",\"hostPort\":{p.HostPort},\"guestPort\":{p.GuestPort}}}");

    private static string Message(string m)
        => JsonSerializer.Serialize(new Dictionary<string, string> { ["message"] = m }, ControlApiJson.Default.DictionaryStringString);

    public void Dispose()
    {
        _listener.Dispose();
        _socketFile.Dispose();
    }
}

/// <summary>Source-generated JSON for the control API's replies: no reflection, so the NativeAOT kit can serialize them.</summary>
[JsonSerializable(typeof(Dictionary<string, string>))]
internal sealed partial class ControlApiJson : JsonSerializerContext;
