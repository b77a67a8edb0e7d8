using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Kit.Linux;
using Kit.VpnKit;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kit.Cli.Net;

/// <summary>
/// The port-forward control API (<c>--control unix:PATH</c>) on Kestrel: <c>GET /forwards</c> lists the forwards,
/// <c>POST /forwards</c> with <c>{"proto":"tcp","hostPort":8080,"guestPort":80}</c> adds one (201; 400/409 with
/// <c>{"message":...}</c>), <c>DELETE /forwards/{proto}/{hostPort}</c> removes one (204; 404). Bodies are at most 16 KiB.
/// </summary>
internal sealed class ControlApi : IDisposable
{
    private const int MaxBody = 16 * 1024;
    private readonly WebApplication _app;
    private readonly Socket _listener;
    private readonly UnixSocketFile.Binding _socketFile;

    /// <exception cref="IOException">The path is taken, is not a socket, or cannot be bound.</exception>
    public ControlApi(VpnKitServer server, string path)
    {
        // UnixSocketFile binds (it refuses to replace anything but a stale socket, and removes only its own inode at
        // the end); the mode is set to 0600 before Kestrel calls listen(2), so no connection can arrive while the file
        // is still open to others (connect(2) on a bound socket that does not listen is refused). Kestrel then gets the
        // descriptor through ListenHandle: ListenUnixSocket would bind the path itself, after deleting what is there.
        // Kestrel wraps a handed-in descriptor without owning it, so this class closes it, after Kestrel has stopped.
        _listener = UnixSocketFile.Bind(path, SocketType.Stream, out _socketFile);
        try
        {
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            _app = KitWebApp.Build(o =>
            {
                o.Limits.MaxRequestBodySize = MaxBody;
                o.ListenHandle((ulong)_listener.Handle);
            });
            Map(_app, server);
            _app.StartAsync().GetAwaiter().GetResult();
        }
        catch
        {
            _listener.Dispose();
            _socketFile.Dispose();
            throw;
        }
    }

    private static void Map(IEndpointRouteBuilder app, VpnKitServer server)
    {
        app.MapGet("/forwards", (RequestDelegate)(ctx =>
        {
            var list = new List<Forward>();
            foreach (PortPublish p in server.Publishes)
            {
                list.Add(Forward.Of(p));
            }
            return Reply(ctx, StatusCodes.Status200OK, list, ControlApiJson.Default.ListForward);
        }));
        app.MapPost("/forwards", (RequestDelegate)(ctx => Add(ctx, server)));
        app.MapDelete("/forwards/{proto}/{hostPort}", (RequestDelegate)(ctx =>
        {
            string proto = (string)ctx.Request.RouteValues["proto"]!;
            if (proto is not ("tcp" or "udp")
                || !int.TryParse((string?)ctx.Request.RouteValues["hostPort"], NumberStyles.None, CultureInfo.InvariantCulture, out int port))
            {
                return Message(ctx, StatusCodes.Status400BadRequest, "use DELETE /forwards/{tcp|udp}/{hostPort}");
            }
            if (!server.RemovePublish(proto == "udp", port))
            {
                return Message(ctx, StatusCodes.Status404NotFound, $"no {proto} forward on port {port}");
            }
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
            return Task.CompletedTask;
        }));
        app.Map("/forwards/{**rest}", (RequestDelegate)(ctx => Message(ctx, StatusCodes.Status405MethodNotAllowed, "method not allowed")));
        app.Map("/{**rest}", (RequestDelegate)(ctx => Message(ctx, StatusCodes.Status404NotFound, "not found")));
    }

    private static async Task Add(HttpContext ctx, VpnKitServer server)
    {
        ForwardRequest? request;
        try
        {
            request = await JsonSerializer.DeserializeAsync(ctx.Request.Body, ControlApiJson.Default.ForwardRequest, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException)
        {
            request = null;
        }
        if (request is null)
        {
            await Message(ctx, StatusCodes.Status400BadRequest, "body must be {\"proto\":\"tcp|udp\",\"hostPort\":N,\"guestPort\":M}").ConfigureAwait(false);
            return;
        }
        string proto = request.Proto ?? "tcp";
        if (proto is not ("tcp" or "udp") || request.HostPort is < 1 or > 65535 || request.GuestPort is < 1 or > 65535)
        {
            await Message(ctx, StatusCodes.Status400BadRequest, "proto must be tcp or udp and ports 1-65535").ConfigureAwait(false);
            return;
        }
        var spec = new PortPublish(request.HostPort, request.GuestPort, proto == "udp");
        if (server.AddPublish(spec) is string error)
        {
            await Message(ctx, StatusCodes.Status409Conflict, error).ConfigureAwait(false);
            return;
        }
        await Reply(ctx, StatusCodes.Status201Created, Forward.Of(spec), ControlApiJson.Default.Forward).ConfigureAwait(false);
    }

    private static Task Message(HttpContext ctx, int status, string message) =>
        Reply(ctx, status, new ControlMessage(message), ControlApiJson.Default.ControlMessage);

    private static Task Reply<T>(HttpContext ctx, int status, T value, JsonTypeInfo<T> type)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        return JsonSerializer.SerializeAsync(ctx.Response.Body, value, type, ctx.RequestAborted);
    }

    public void Dispose()
    {
        KitWebApp.Stop(_app);
        _listener.Dispose();
        _socketFile.Dispose();
    }
}

internal sealed record Forward(string Proto, int HostPort, int GuestPort)
{
    public static Forward Of(PortPublish p) => new(p.Udp ? "udp" : "tcp", p.HostPort, p.GuestPort);
}

internal sealed record ForwardRequest(string? Proto, int HostPort, int GuestPort);

internal sealed record ControlMessage(string Message);

/// <summary>Source-generated JSON for the control API: no reflection, so the NativeAOT kit can serialize it.</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(List<Forward>))]
[JsonSerializable(typeof(Forward))]
[JsonSerializable(typeof(ForwardRequest))]
[JsonSerializable(typeof(ControlMessage))]
internal sealed partial class ControlApiJson : JsonSerializerContext;
