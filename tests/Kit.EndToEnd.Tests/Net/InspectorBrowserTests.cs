using System.Globalization;
using Microsoft.Playwright;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// The inspector's page in a real browser: Debian's chromium, driven by Playwright for .NET (its bundled driver, the
/// system browser, headless). A namespace fetches two pages with busybox wget; a MutationObserver in the page stamps the
/// moment each request's row shows its path and 200, which must be within a second of the fetch; the filter box then
/// narrows the rows.
/// </summary>
[Trait("Tier", "Real")]
public sealed class InspectorBrowserTests
{
    private const string Chromium = "/usr/bin/chromium";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);

    public InspectorBrowserTests()
    {
        NetRun.RequirePrerequisites();
        Assert.True(File.Exists(Chromium), "chromium is missing (./test installs it)");
    }

    /// <summary>Stamps, per path, when a row with that path and status 200 first appears in the HTTP view.</summary>
    private const string Observer = """
() => {
  window.kitSeen = {};
  const stamp = () => {
    for (const tr of document.querySelectorAll("#view tr")) {
      const c = tr.cells;
      if (c.length > 3 && c[3].textContent === "200" && !(c[2].textContent in window.kitSeen)) window.kitSeen[c[2].textContent] = Date.now();
    }
  };
  new MutationObserver(stamp).observe(document.getElementById("view"), {childList: true, subtree: true});
}
""";

    [Fact]
    public async Task The_page_shows_a_request_within_a_second_and_filters()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        using var http = new TinyHttpServer(size: 4096);
        int ui = LoopbackPort.Free();
        string dir = Directory.CreateTempSubdirectory("kit-browser-").FullName;
        string go = Path.Combine(dir, "go"), done = Path.Combine(dir, "done"), end = Path.Combine(dir, "end"), started = Path.Combine(dir, "started");
        try
        {
            // The fetch's start is stamped in milliseconds of the same wall clock the browser's Date.now() reads.
            string script = $"i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; "
                + $"python3 -c 'import time; print(int(time.time() * 1000))' > {started}; "
                + $"busybox wget -q -O /dev/null http://192.168.65.2:{http.Port}/browser-first; "
                + $"busybox wget -q -O /dev/null http://192.168.65.2:{http.Port}/browser-second; "
                + $"touch {done}; i=0; while [ ! -e {end} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done";
            Task<ProcessResult> run = NetRun.RunAsync(["--ui", $"tcp://127.0.0.1:{ui}", "--dns-upstream", "127.0.0.1:9"], script, Timeout);
            using (var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(30) })
            {
                await InspectorPcapTests.WaitForApi(api, run);
            }

            using IPlaywright playwright = await Playwright.CreateAsync();
            await using IBrowser browser = await playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
            {
                ExecutablePath = Chromium,
                Headless = true,
                // Root has no user namespace sandbox to drop into; the page is the test's own, on loopback.
                Args = ["--no-sandbox"],
            });
            IPage page = await browser.NewPageAsync();
            await page.GotoAsync($"http://127.0.0.1:{ui}/");
            await page.ClickAsync("nav button[data-tab=http]");
            await page.Locator("#status").Filter(new LocatorFilterOptions { HasText = "live" }).WaitForAsync(new LocatorWaitForOptions { Timeout = 10_000 });
            await page.EvaluateAsync(Observer);

            File.WriteAllText(go, "");
            long seen = 0;
            for (int i = 0; i < 100 && seen == 0; i++)
            {
                seen = await page.EvaluateAsync<long>("() => window.kitSeen['/browser-first'] ?? 0");
                if (seen == 0)
                {
                    await Task.Delay(100, ct);
                }
            }
            Assert.True(seen != 0, $"the row never showed\n{await page.InnerTextAsync("#view")}");
            long start = long.Parse((await File.ReadAllTextAsync(started, ct)).Trim(), CultureInfo.InvariantCulture);
            long latency = seen - start;
            TestContext.Current.SendDiagnosticMessage($"inspector page: row for /browser-first (200) {latency} ms after the fetch started");
            Assert.InRange(latency, 0, 1000);

            // Both rows, then the filter: a path keeps its row only; a word nobody has keeps none.
            for (int i = 0; i < 50 && !await page.EvaluateAsync<bool>("() => '/browser-second' in window.kitSeen"); i++)
            {
                await Task.Delay(100, ct);
            }
            Assert.Equal(2, await Rows(page));
            await page.FillAsync("#filter", "browser-second");
            Assert.Equal(1, await Rows(page));
            Assert.Contains("/browser-second", await page.InnerTextAsync("#view"));
            Assert.DoesNotContain("/browser-first", await page.InnerTextAsync("#view"));
            await page.FillAsync("#filter", "no-such-request");
            Assert.Equal(0, await Rows(page));
            Assert.Contains("No HTTP exchanges yet", await page.InnerTextAsync("#view"));
            await page.FillAsync("#filter", "");
            Assert.Equal(2, await Rows(page));

            File.WriteAllText(end, "");
            ProcessResult r = await run;
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        }
        finally
        {
            File.WriteAllText(go, "");
            File.WriteAllText(end, "");
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>HTTP rows whose path is one of this test's (the header row has no td).</summary>
    private static Task<int> Rows(IPage page) =>
        page.EvaluateAsync<int>("() => [...document.querySelectorAll('#view tr')].filter(tr => tr.cells.length > 3 && tr.cells[2].textContent.startsWith('/browser-')).length");
}
