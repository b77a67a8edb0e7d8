using System.Net;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using System.Threading.Channels;
using Kit.VpnKit.Capture;
using Kit.VpnKit.Inspect;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;

namespace Kit.Cli.Net;

/// <summary>
/// The inspector's web page and JSON API (<c>--ui tcp://127.0.0.1:PORT</c>) on Kestrel: <c>/api/flows</c>,
/// <c>/api/dns</c>, <c>/api/http</c>, <c>/api/http.har</c> (HAR 1.2), <c>/api/events</c> (server-sent events), <c>/api/pcap</c> (<see cref="PcapApi"/>) and the page
/// at <c>/</c>, which has no external assets. Handlers are plain <see cref="RequestDelegate"/>s writing source-generated
/// JSON (<see cref="InspectJson"/>), so the NativeAOT kit needs no reflection.
/// </summary>
internal sealed class InspectorWeb : IDisposable
{
    private readonly WebApplication _app;

    private InspectorWeb(WebApplication app, IPEndPoint endPoint)
    {
        _app = app;
        EndPoint = endPoint;
    }

    public IPEndPoint EndPoint { get; }

    /// <summary>A Host header naming an IP literal or localhost (what a browser sends for the address it was given).</summary>
    internal static bool IsAddressOrLocalhost(string host) =>
        string.Equals(host, "localhost", StringComparison.OrdinalIgnoreCase) || IPAddress.TryParse(host.Trim('[', ']'), out _);

    /// <summary>Binds and starts serving; throws IOException with a one-line reason when the address cannot be had.</summary>
    public static InspectorWeb Start(Inspector inspector, LiveCaptures? captures, IPEndPoint endPoint)
    {
        WebApplication app = KitWebApp.Build(o => o.Listen(endPoint));
        // DNS rebinding: a web page the user visits can point a name of its own at 127.0.0.1 and read the guest's traffic
        // from its script. Such a request carries that name in Host, so only an address or "localhost" is served.
        app.Use(next => ctx =>
        {
            if (!IsAddressOrLocalhost(ctx.Request.Host.Host))
            {
                ctx.Response.StatusCode = StatusCodes.Status421MisdirectedRequest;
                return Task.CompletedTask;
            }
            return next(ctx);
        });
        app.MapGet("/", (RequestDelegate)(ctx =>
        {
            ctx.Response.ContentType = "text/html; charset=utf-8";
            ctx.Response.Headers.CacheControl = "no-store";
            return ctx.Response.WriteAsync(InspectorPage.Html, ctx.RequestAborted);
        }));
        app.MapGet("/api/flows", (RequestDelegate)(ctx => Json(ctx, inspector.Flows(), InspectJson.Default.ListFlowView)));
        app.MapGet("/api/dns", (RequestDelegate)(ctx => Json(ctx, inspector.DnsLog(), InspectJson.Default.ListDnsEntry)));
        app.MapGet("/api/http", (RequestDelegate)(ctx =>
        {
            var views = new List<HttpView>();
            foreach (HttpExchange x in inspector.Exchanges())
            {
                views.Add(HttpView.Of(x));
            }
            return Json(ctx, views, InspectJson.Default.ListHttpView);
        }));
        app.MapGet("/api/http.har", (RequestDelegate)(ctx =>
        {
            ctx.Response.Headers.ContentDisposition = "inline; filename=\"kit.har\"";
            return Json(ctx, HarBuilder.Build(inspector.Exchanges(), CliVersion()), InspectJson.Default.Har);
        }));
        app.MapGet("/api/events", (RequestDelegate)(ctx => Events(ctx, inspector)));
        if (captures is not null)
        {
            PcapApi.Map(app, inspector, captures);
        }
        RulesApi.Map(app, inspector);
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
        catch (IOException e)
        {
            ((IDisposable)app).Dispose();
            throw new IOException($"--ui: cannot listen on tcp://{endPoint}: {Unwrap(e)}", e);
        }
        return new InspectorWeb(app, endPoint);
    }

    private static string Unwrap(Exception e) => e.InnerException is System.Net.Sockets.SocketException s
        ? (s.SocketErrorCode == System.Net.Sockets.SocketError.AddressAlreadyInUse ? "address in use (another process listens there)" : s.Message)
        : e.Message;

    private static string CliVersion() =>
        typeof(InspectorWeb).Assembly.GetName().Version?.ToString() ?? "0";

    private static async Task Json<T>(HttpContext ctx, T value, JsonTypeInfo<T> type)
    {
        ctx.Response.ContentType = "application/json";
        ctx.Response.Headers.CacheControl = "no-store";
        await JsonSerializer.SerializeAsync(ctx.Response.Body, value, type, ctx.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>Server-sent events (HTML Living Standard §9.2): one <c>event:</c>/<c>data:</c> block per record, a comment every 15 s.</summary>
    private static async Task Events(HttpContext ctx, Inspector inspector)
    {
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-store";
        ChannelReader<InspectEvent> events = inspector.Subscribe(out IDisposable lease);
        using (lease)
        {
            CancellationToken stop = ctx.RequestAborted;
            await ctx.Response.WriteAsync(": kit inspector\n\n", stop).ConfigureAwait(false);
            await ctx.Response.Body.FlushAsync(stop).ConfigureAwait(false);
            try
            {
                while (!stop.IsCancellationRequested)
                {
                    using var wait = CancellationTokenSource.CreateLinkedTokenSource(stop);
                    wait.CancelAfter(TimeSpan.FromSeconds(15));
                    bool more;
                    try
                    {
                        more = await events.WaitToReadAsync(wait.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException) when (!stop.IsCancellationRequested)
                    {
                        await ctx.Response.WriteAsync(": keep-alive\n\n", stop).ConfigureAwait(false);
                        await ctx.Response.Body.FlushAsync(stop).ConfigureAwait(false);
                        continue;
                    }
                    if (!more)
                    {
                        return;
                    }
                    while (events.TryRead(out InspectEvent? e))
                    {
                        string data = JsonSerializer.Serialize(e, InspectJson.Default.InspectEvent);
                        await ctx.Response.WriteAsync($"event: {e.Kind}\ndata: {data}\n\n", stop).ConfigureAwait(false);
                    }
                    await ctx.Response.Body.FlushAsync(stop).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }
    }

    public void Dispose() => KitWebApp.Stop(_app);
}
