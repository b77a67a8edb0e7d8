using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Kit.VpnKit.Inspect;
using Spectre.Console;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit net flows --api URL [--json]`: the flows a running gateway's inspector (<c>--ui</c>) holds, as a table or JSON;
/// `kit net top --api URL`: the open and latest flows, busiest first, redrawn every second until Ctrl-C.
/// </summary>
internal static class NetFlowsCommand
{
    public static Command CreateTop()
    {
        var api = new Option<string>("--api") { HelpName = "URL", Description = "The inspector's address, as given to --ui (http://127.0.0.1:PORT).", Required = true };
        var rows = new Option<int>("--rows") { HelpName = "N", Description = "Flows shown (default 20).", DefaultValueFactory = _ => 20 };
        var top = new Command("top", "Show a gateway's flows live, busiest first (a gateway started with --ui).") { api, rows };
        top.SetAction(parse => Top(parse.GetValue(api)!, Math.Clamp(parse.GetValue(rows), 1, 1000)));
        return top;
    }

    private static int Top(string api, int rows)
    {
        Uri url = ApiUri(api, "/api/flows");
        using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        using var stop = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            e.Cancel = true;
            stop.Cancel();
        };
        var last = new Dictionary<long, long>();
        AnsiConsole.Live(new Text("connecting to " + url)).Start(ctx =>
        {
            while (!stop.IsCancellationRequested)
            {
                List<FlowView> flows;
                try
                {
                    flows = JsonSerializer.Deserialize(client.GetStringAsync(url, stop.Token).GetAwaiter().GetResult(), InspectJson.Default.ListFlowView) ?? [];
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException or JsonException)
                {
                    ctx.UpdateTarget(new Text($"{url}: {e.Message}"));
                    stop.Token.WaitHandle.WaitOne(1000);
                    continue;
                }
                // Rate: bytes since the last poll (a second ago), both ways.
                var rated = new List<(FlowView Flow, long Rate)>(flows.Count);
                var now = new Dictionary<long, long>(flows.Count);
                foreach (FlowView f in flows)
                {
                    long total = f.BytesIn + f.BytesOut;
                    now[f.Id] = total;
                    rated.Add((f, total - last.GetValueOrDefault(f.Id, total)));
                }
                last = now;
                rated.Sort((a, b) => a.Flow.Ended is null != b.Flow.Ended is null ? (a.Flow.Ended is null ? -1 : 1)
                    : b.Rate != a.Rate ? b.Rate.CompareTo(a.Rate) : b.Flow.Id.CompareTo(a.Flow.Id));
                var table = new Table().Border(TableBorder.Simple).Title($"kit net top: {flows.Count} flows ({url})");
                foreach (string h in (string[])["proto", "guest", "remote", "name", "app", "rate/s", "out", "in", "rtt", "end"])
                {
                    table.AddColumn(h);
                }
                for (int i = 0; i < rated.Count && i < rows; i++)
                {
                    FlowView f = rated[i].Flow;
                    table.AddRow(Cell(f.Proto), Cell($"{f.Guest}:{f.GuestPort}"), Cell($"{f.Remote}:{f.RemotePort}"), Cell(f.Name ?? f.Sni ?? f.HttpHost ?? ""),
                        Cell(f.App ?? ""), Cell(Bytes(rated[i].Rate)), Cell(Bytes(f.BytesOut)), Cell(Bytes(f.BytesIn)), Cell(f.RttMs > 0 ? $"{f.RttMs} ms" : ""),
                        Cell(f.Ended ?? "open"));
                }
                ctx.UpdateTarget(table);
                stop.Token.WaitHandle.WaitOne(1000);
            }
        });
        return 0;
    }

    private static string Bytes(long n) => n < 1024 ? $"{n} B" : n < 1 << 20 ? $"{n / 1024.0:0.0} KiB" : $"{n / 1048576.0:0.0} MiB";

    public static Command Create()
    {
        var api = new Option<string>("--api") { HelpName = "URL", Description = "The inspector's address, as given to --ui (http://127.0.0.1:PORT or tcp://127.0.0.1:PORT).", Required = true };
        var json = new Option<bool>("--json") { Description = "Print the flows as JSON (the API's /api/flows)." };
        var flows = new Command("flows", "List the flows a gateway started with --ui has seen.") { api, json };
        flows.SetAction(parse => Run(parse.GetValue(api)!, parse.GetValue(json)));
        return flows;
    }

    private static int Run(string api, bool json)
    {
        Uri url = ApiUri(api, "/api/flows");
        string body;
        using (var client = new HttpClient { Timeout = TimeSpan.FromSeconds(10) })
        {
            try
            {
                using HttpResponseMessage r = client.GetAsync(url).GetAwaiter().GetResult();
                if (!r.IsSuccessStatusCode)
                {
                    throw new CliException($"{url}: {(int)r.StatusCode} {r.ReasonPhrase}");
                }
                body = r.Content.ReadAsStringAsync().GetAwaiter().GetResult();
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                throw new CliException($"cannot reach the inspector at {url}: {e.Message}");
            }
        }
        if (json)
        {
            Console.Out.WriteLine(body);
            return 0;
        }
        List<FlowView> list;
        try
        {
            list = JsonSerializer.Deserialize(body, InspectJson.Default.ListFlowView) ?? [];
        }
        catch (JsonException e)
        {
            throw new CliException($"{url} did not answer with flows: {e.Message}");
        }
        var table = new Table().Border(TableBorder.Simple);
        foreach (string h in (string[])["#", "proto", "guest", "remote", "name", "app", "out", "in", "rtt", "end"])
        {
            table.AddColumn(h);
        }
        foreach (FlowView f in list)
        {
            table.AddRow(
                Cell(f.Id.ToString(CultureInfo.InvariantCulture)), Cell(f.Proto), Cell($"{f.Guest}:{f.GuestPort}"), Cell($"{f.Remote}:{f.RemotePort}"),
                Cell(f.Name ?? f.Sni ?? f.HttpHost ?? ""), Cell(f.App ?? ""), Cell($"{f.BytesOut} B/{f.PacketsOut}"), Cell($"{f.BytesIn} B/{f.PacketsIn}"),
                Cell(f.RttMs > 0 ? $"{f.RttMs} ms" : ""), Cell(f.Ended ?? "open"));
        }
        if (Console.IsOutputRedirected)
        {
            // Into a pipe or file: rows whole, not wrapped to the 80 columns Spectre assumes without a terminal.
            AnsiConsole.Profile.Width = 400;
        }
        AnsiConsole.Write(table);
        return 0;
    }

    private static Spectre.Console.Text Cell(string s) => new(s);

    /// <summary>The inspector's URL for <paramref name="path"/>; tcp://HOST:PORT (the --ui spelling) is taken as http.</summary>
    internal static Uri ApiUri(string api, string path)
    {
        string baseUrl = api.StartsWith("tcp://", StringComparison.Ordinal) ? "http://" + api[6..] : api;
        if (!Uri.TryCreate(baseUrl, UriKind.Absolute, out Uri? u) || u.Scheme != Uri.UriSchemeHttp)
        {
            throw new CliException($"--api wants http://HOST:PORT, got '{api}'");
        }
        return new Uri(u, path);
    }
}
