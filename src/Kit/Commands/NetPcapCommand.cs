using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Kit.Linux;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit net pcap --api URL --flow ID|--rule NAME -w FILE`: a live capture of one flow, or of every flow one policy rule
/// decides from now on (rejected and denied ones too), through the inspector's <c>/api/pcap</c>,
/// written to FILE (0600, never through a symlink, as <c>--pcap</c>) until Ctrl-C or SIGTERM, or until the capture is
/// full, or its rule is deleted; then the capture is deleted on the gateway.
/// </summary>
internal static class NetPcapCommand
{
    public static Command Create()
    {
        var api = new Option<string>("--api") { HelpName = "URL", Description = "The inspector's address, as given to --ui (http://127.0.0.1:PORT).", Required = true };
        var flow = new Option<long?>("--flow") { HelpName = "ID", Description = "The flow to capture (its id in kit net flows --json or /api/flows)." };
        var rule = new Option<string?>("--rule")
        {
            HelpName = "NAME",
            Description = "Capture every flow this policy rule decides from now on (TCP, UDP, ICMP; rejected and denied ones too), until Ctrl-C or the rule is deleted.",
        };
        var write = new Option<FileInfo>("--write", "-w") { HelpName = "FILE", Description = "Write the capture to FILE (libpcap).", Required = true };
        var pcap = new Command("pcap", "Capture one flow, or one policy rule's flows, of a gateway started with --ui, until Ctrl-C.") { api, flow, rule, write };
        pcap.SetAction(parse => Run(parse.GetValue(api)!, parse.GetValue(flow), parse.GetValue(rule), parse.GetValue(write)!.FullName));
        return pcap;
    }

    private static int Run(string api, long? flow, string? rule, string path)
    {
        if ((flow is null) == (rule is null))
        {
            throw new CliException("give one of --flow ID and --rule NAME");
        }
        Uri start = NetFlowsCommand.ApiUri(api, "/api/pcap");
        using var client = new HttpClient { Timeout = Timeout.InfiniteTimeSpan };
        using var stop = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            stop.Cancel();
        };
        using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
        {
            c.Cancel = true;
            stop.Cancel();
        });
        string id;
        try
        {
            string json = rule is null
                ? string.Create(CultureInfo.InvariantCulture, $"{{\"flow\":{flow}}}")
                : JsonSerializer.Serialize(new PcapRuleRequest(rule), PcapRuleJson.Default.PcapRuleRequest);
            using var body = new StringContent(json, Encoding.UTF8, "application/json");
            using HttpResponseMessage created = client.PostAsync(start, body).GetAwaiter().GetResult();
            string text = created.Content.ReadAsStringAsync().GetAwaiter().GetResult();
            using JsonDocument reply = JsonDocument.Parse(text);
            if (!created.IsSuccessStatusCode)
            {
                throw new CliException($"{start}: {(int)created.StatusCode}: {(reply.RootElement.TryGetProperty("message", out JsonElement m) ? m.GetString() : text)}");
            }
            id = reply.RootElement.GetProperty("id").GetInt64().ToString(CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new CliException($"cannot start a capture at {start}: {e.Message}");
        }
        Uri capture = NetFlowsCommand.ApiUri(api, $"/api/pcap/{id}");
        // Ctrl-C deletes the capture rather than cutting the stream: the gateway then ends it after a whole record,
        // so the file is always a complete libpcap file.
        using CancellationTokenRegistration onStop = stop.Token.Register(() => _ = client.DeleteAsync(capture));
        try
        {
            using var file = new FileStream(PrivateFile.CreateForWrite(path), FileAccess.Write, 1 << 16);
            Console.Error.WriteLine($"kit: capturing {(rule is null ? $"flow {flow}" : $"the flows of rule {rule}")} to {path} (capture {id}); Ctrl-C stops");
            using Stream stream = client.GetStreamAsync(capture).GetAwaiter().GetResult();
            stream.CopyTo(file);
            if (!stop.IsCancellationRequested && EndReason(client, api, id) is string reason)
            {
                Console.Error.WriteLine($"kit: capture {id} ended: {reason}");
            }
        }
        catch (Exception e) when (e is HttpRequestException or IOException or UnauthorizedAccessException)
        {
            throw new CliException($"capture {id}: {e.Message}");
        }
        finally
        {
            try
            {
                client.DeleteAsync(capture).GetAwaiter().GetResult().Dispose();
            }
            catch (HttpRequestException)
            {
                // The gateway is gone, and its captures with it.
            }
        }
        return 0;
    }

    /// <summary>Why the gateway ended a capture by itself (<c>full</c>, <c>rule deleted</c>), from <c>/api/pcap</c>; null if it cannot say.</summary>
    private static string? EndReason(HttpClient client, string api, string id)
    {
        try
        {
            using JsonDocument list = JsonDocument.Parse(client.GetStringAsync(NetFlowsCommand.ApiUri(api, "/api/pcap")).GetAwaiter().GetResult());
            foreach (JsonElement c in list.RootElement.EnumerateArray())
            {
                if (c.GetProperty("id").GetInt64().ToString(CultureInfo.InvariantCulture) == id
                    && c.TryGetProperty("ended", out JsonElement ended) && ended.ValueKind == JsonValueKind.String)
                {
                    return ended.GetString();
                }
            }
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException)
        {
            // Only a message is lost.
        }
        return null;
    }
}

internal sealed record PcapRuleRequest(string Rule);

[System.Text.Json.Serialization.JsonSourceGenerationOptions(PropertyNamingPolicy = System.Text.Json.Serialization.JsonKnownNamingPolicy.CamelCase)]
[System.Text.Json.Serialization.JsonSerializable(typeof(PcapRuleRequest))]
internal sealed partial class PcapRuleJson : System.Text.Json.Serialization.JsonSerializerContext;
