using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Kit.VpnKit.Inspect;
using Spectre.Console;

namespace Kit.Cli.Commands;

/// <summary>`kit net flows --api URL [--json]`: the flows a running gateway's inspector (<c>--ui</c>) holds, as a table or JSON.</summary>
internal static class NetFlowsCommand
{
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
