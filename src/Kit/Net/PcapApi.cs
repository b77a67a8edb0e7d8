using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;
using Kit.VpnKit.Capture;
using Kit.VpnKit.Inspect;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kit.Cli.Net;

/// <summary>
/// The inspector's live captures: <c>POST /api/pcap</c> with <c>{"flow":ID}</c> (a flow of <c>/api/flows</c>), <c>{"rule":NAME}</c>
/// or <c>?rule=NAME</c> (every flow that policy rule decides from now on: <see cref="LiveCaptures.TryStartRule"/>) or a 5-tuple
/// whose parts may be left out (<c>{"proto":"tcp","guest":"192.168.65.3","guestPort":N,"remote":"192.168.65.2","remotePort":M}</c>)
/// starts one (201 with its id); <c>GET /api/pcap</c> lists them; <c>GET /api/pcap/{id}</c> streams its libpcap file from
/// the start and follows it until it stops; <c>DELETE /api/pcap/{id}</c> stops it, ends those streams and frees it (204).
/// </summary>
internal static class PcapApi
{
    public static void Map(IEndpointRouteBuilder app, Inspector inspector, LiveCaptures captures)
    {
        app.MapGet("/api/pcap", (RequestDelegate)(ctx =>
        {
            var list = new List<PcapCaptureView>();
            foreach (LiveCapture c in captures.All)
            {
                list.Add(PcapCaptureView.Of(c));
            }
            return Reply(ctx, StatusCodes.Status200OK, list, PcapJson.Default.ListPcapCaptureView);
        }));
        app.MapPost("/api/pcap", (RequestDelegate)(ctx => Start(ctx, inspector, captures)));
        app.MapGet("/api/pcap/{id}", (RequestDelegate)(async ctx =>
        {
            if (Id(ctx) is not long id || captures.Find(id) is not LiveCapture c)
            {
                await Message(ctx, StatusCodes.Status404NotFound, "no such capture").ConfigureAwait(false);
                return;
            }
            ctx.Response.ContentType = "application/vnd.tcpdump.pcap";
            ctx.Response.Headers.CacheControl = "no-store";
            ctx.Response.Headers.ContentDisposition = $"attachment; filename=\"kit-{id}.pcap\"";
            try
            {
                await c.CopyToAsync(ctx.Response.Body, ctx.RequestAborted).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // The reader went away; the capture goes on.
            }
        }));
        app.MapDelete("/api/pcap/{id}", (RequestDelegate)(ctx =>
        {
            if (Id(ctx) is not long id || !captures.Remove(id))
            {
                return Message(ctx, StatusCodes.Status404NotFound, "no such capture");
            }
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
            return Task.CompletedTask;
        }));
    }

    private static long? Id(HttpContext ctx) =>
        long.TryParse((string?)ctx.Request.RouteValues["id"], NumberStyles.None, CultureInfo.InvariantCulture, out long id) ? id : null;

    private static async Task Start(HttpContext ctx, Inspector inspector, LiveCaptures captures)
    {
        // Only JSON: a page on another site can send a form or text/plain POST to a loopback port without asking, but
        // a JSON one needs a CORS preflight, which this server never grants (docs/security.md).
        if (!string.Equals(ctx.Request.ContentType?.Split(';')[0].Trim(), "application/json", StringComparison.OrdinalIgnoreCase))
        {
            await Message(ctx, StatusCodes.Status415UnsupportedMediaType, "send Content-Type: application/json").ConfigureAwait(false);
            return;
        }
        PcapRequest? request;
        try
        {
            request = await JsonSerializer.DeserializeAsync(ctx.Request.Body, PcapJson.Default.PcapRequest, ctx.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException)
        {
            request = null;
        }
        // ?rule=NAME names the rule in the address; the body may then be empty (still sent as JSON, for the reason above).
        string? ruleQuery = ctx.Request.Query["rule"];
        if (ruleQuery is not null && (request is null || request.Rule is null))
        {
            request = (request ?? new PcapRequest(null, null, null, null, null, null)) with { Rule = ruleQuery };
        }
        if (request is null)
        {
            await Message(ctx, StatusCodes.Status400BadRequest, "body must be {\"flow\":ID}, {\"rule\":NAME} or {\"proto\":..,\"guest\":..,\"guestPort\":..,\"remote\":..,\"remotePort\":..}").ConfigureAwait(false);
            return;
        }
        if (request.Rule is string rule)
        {
            await StartRule(ctx, captures, request, rule).ConfigureAwait(false);
            return;
        }
        if (request.Flow is long flowId)
        {
            if (inspector.Flows().Find(f => f.Id == flowId) is not FlowView f)
            {
                await Message(ctx, StatusCodes.Status404NotFound, $"no flow {flowId} (see /api/flows)").ConfigureAwait(false);
                return;
            }
            request = new PcapRequest(null, f.Proto, f.Guest, f.Proto == "icmp" ? null : f.GuestPort, f.Remote, f.Proto == "icmp" ? null : f.RemotePort);
        }
        if (FlowFilter.Create(request.Proto, request.Guest, request.GuestPort, request.Remote, request.RemotePort, out string? error) is not FlowFilter filter)
        {
            await Message(ctx, StatusCodes.Status400BadRequest, error!).ConfigureAwait(false);
            return;
        }
        if (captures.Start(filter) is not LiveCapture c)
        {
            await Message(ctx, StatusCodes.Status429TooManyRequests, $"{captures.MaxCaptures} captures are held already; DELETE one").ConfigureAwait(false);
            return;
        }
        ctx.Response.Headers.Location = $"/api/pcap/{c.Id}";
        await Reply(ctx, StatusCodes.Status201Created, PcapCaptureView.Of(c), PcapJson.Default.PcapCaptureView).ConfigureAwait(false);
    }

    /// <summary>A capture of the flows one policy rule decides from now on: 404 for a rule the gateway does not have.</summary>
    private static async Task StartRule(HttpContext ctx, LiveCaptures captures, PcapRequest request, string rule)
    {
        if (request.Flow is not null || request.Proto is not null || request.Guest is not null || request.GuestPort is not null
            || request.Remote is not null || request.RemotePort is not null || (string?)ctx.Request.Query["rule"] is string q && q != rule)
        {
            await Message(ctx, StatusCodes.Status400BadRequest, "a capture is of one rule, one flow or one 5-tuple: give only one").ConfigureAwait(false);
            return;
        }
        if (!captures.TryStartRule(rule, out LiveCapture? c))
        {
            await Message(ctx, StatusCodes.Status404NotFound, $"no rule '{rule}' (see /api/rules)").ConfigureAwait(false);
            return;
        }
        if (c is null)
        {
            await Message(ctx, StatusCodes.Status429TooManyRequests, $"{captures.MaxCaptures} captures are held already; DELETE one").ConfigureAwait(false);
            return;
        }
        ctx.Response.Headers.Location = $"/api/pcap/{c.Id}";
        await Reply(ctx, StatusCodes.Status201Created, PcapCaptureView.Of(c), PcapJson.Default.PcapCaptureView).ConfigureAwait(false);
    }

    private static Task Message(HttpContext ctx, int status, string message) =>
        Reply(ctx, status, new ControlMessage(message), PcapJson.Default.ControlMessage);

    private static Task Reply<T>(HttpContext ctx, int status, T value, JsonTypeInfo<T> type)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        ctx.Response.Headers.CacheControl = "no-store";
        return JsonSerializer.SerializeAsync(ctx.Response.Body, value, type, ctx.RequestAborted);
    }
}

internal sealed record PcapRequest(long? Flow, string? Proto, string? Guest, int? GuestPort, string? Remote, int? RemotePort, string? Rule = null);

/// <summary>
/// A live capture as <c>/api/pcap</c> shows it: <c>rule</c> and <c>flows</c> (the flows it followed) for a capture of a
/// rule; <c>ended</c> says why it takes no more frames (<c>full</c>, <c>rule deleted</c>), null while it runs.
/// </summary>
internal sealed record PcapCaptureView(long Id, string Url, long Frames, long Bytes, bool Full, string? Rule, long? Flows, string? Ended)
{
    public static PcapCaptureView Of(LiveCapture c) =>
        new(c.Id, $"/api/pcap/{c.Id}", c.Frames, c.Bytes, c.Full, c.Rule, c.Rule is null ? null : c.Flows, c.EndReason);
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(PcapRequest))]
[JsonSerializable(typeof(PcapCaptureView))]
[JsonSerializable(typeof(List<PcapCaptureView>))]
[JsonSerializable(typeof(ControlMessage))]
internal sealed partial class PcapJson : JsonSerializerContext;
