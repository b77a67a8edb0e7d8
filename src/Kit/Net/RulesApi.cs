using System.Buffers;
using System.Text.Json;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Policy;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Kit.Cli.Net;

/// <summary>
/// <c>/api/rules</c> on the inspector's listener: GET lists the rules with their counters, POST adds or replaces one
/// rule by name (or, with <c>{"rules":[...]}</c>, the whole list), DELETE <c>/api/rules/{name}</c> removes one. Bodies are
/// the policy file's format, read by <see cref="PolicyJson"/>: a bad one is a 400 whose message names the field or line.
/// A change takes effect for the next flow.
/// </summary>
internal static class RulesApi
{
    public static void Map(WebApplication app, Inspector inspector)
    {
        if (inspector.Policy is not { } table)
        {
            return;
        }
        app.MapGet("/api/rules", (RequestDelegate)(ctx => WriteRules(ctx, table, StatusCodes.Status200OK)));
        app.MapPost("/api/rules", (RequestDelegate)(ctx => PostAsync(ctx, table)));
        app.MapDelete("/api/rules/{name}", (RequestDelegate)(ctx =>
        {
            string name = ctx.Request.RouteValues["name"] as string ?? "";
            if (!table.Remove(name))
            {
                return Message(ctx, StatusCodes.Status404NotFound, $"no rule named '{(name.Length > 64 ? name[..64] + "..." : name)}'");
            }
            ctx.Response.StatusCode = StatusCodes.Status204NoContent;
            return Task.CompletedTask;
        }));
    }

    private static async Task PostAsync(HttpContext ctx, PolicyTable table)
    {
        // Changing rules is the one write on this listener. A page in the user's browser can send a "simple" cross-origin
        // POST to 127.0.0.1 (text/plain, no preflight); it cannot send application/json without a CORS preflight, which
        // this server never grants. So only JSON bodies are taken.
        if (ctx.Request.ContentType is not { } type || !type.StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
        {
            await Message(ctx, StatusCodes.Status415UnsupportedMediaType, "POST /api/rules takes Content-Type: application/json").ConfigureAwait(false);
            return;
        }
        byte[]? body = await ReadBoundedAsync(ctx).ConfigureAwait(false);
        if (body is null)
        {
            await Message(ctx, StatusCodes.Status413PayloadTooLarge, $"a rules body is at most {PolicyJson.MaxBytes} bytes").ConfigureAwait(false);
            return;
        }
        int status;
        try
        {
            List<PolicyRule> rules = PolicyJson.ParseBody(body, out bool whole);
            if (whole)
            {
                table.ReplaceAll(rules);
                status = StatusCodes.Status200OK;
            }
            else
            {
                status = table.Put(rules[0]) ? StatusCodes.Status200OK : StatusCodes.Status201Created;
            }
        }
        catch (PolicyException e)
        {
            await Message(ctx, StatusCodes.Status400BadRequest, e.Message).ConfigureAwait(false);
            return;
        }
        await WriteRules(ctx, table, status).ConfigureAwait(false);
    }

    /// <summary>The body, or null when it is larger than a policy may be.</summary>
    private static async Task<byte[]?> ReadBoundedAsync(HttpContext ctx)
    {
        var buffer = new ArrayBufferWriter<byte>();
        while (true)
        {
            Memory<byte> into = buffer.GetMemory(16 * 1024);
            int n = await ctx.Request.Body.ReadAsync(into, ctx.RequestAborted).ConfigureAwait(false);
            if (n == 0)
            {
                return buffer.WrittenSpan.ToArray();
            }
            buffer.Advance(n);
            if (buffer.WrittenCount > PolicyJson.MaxBytes)
            {
                return null;
            }
        }
    }

    private static Task WriteRules(HttpContext ctx, PolicyTable table, int status)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            PolicyJson.Write(w, table.Rules);
        }
        return Send(ctx, status, buffer.WrittenMemory);
    }

    private static Task Message(HttpContext ctx, int status, string message)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("message", message);
            w.WriteEndObject();
        }
        return Send(ctx, status, buffer.WrittenMemory);
    }

    private static Task Send(HttpContext ctx, int status, ReadOnlyMemory<byte> json)
    {
        ctx.Response.StatusCode = status;
        ctx.Response.ContentType = "application/json";
        ctx.Response.Headers.CacheControl = "no-store";
        return ctx.Response.Body.WriteAsync(json, ctx.RequestAborted).AsTask();
    }
}
