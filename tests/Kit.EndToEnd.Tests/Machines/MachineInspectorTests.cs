using System.Diagnostics;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// `kit up NAME --ui tcp://127.0.0.1:PORT` on QEMU's software CPU: the machine's VPNKit serves the inspector there;
/// `kit exec NAME -- busybox wget http://host.internal:PORT/...` against a loopback server of the test shows in
/// /api/http with its path and 200; `kit status` names the page; after `kit down` a plain `kit up NAME` serves it again,
/// because the address is kept in the machine's configuration.
/// </summary>
[Trait("Tier", "Real")]
public sealed class MachineInspectorTests(ITestOutputHelper output) : IDisposable
{
    private const string Name = "inspected";
    private readonly MachineHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Fact]
    public async Task Kit_up_ui_serves_the_machines_traffic_and_keeps_it_across_a_restart()
    {
        using var http = new TinyHttpServer(size: 4096);
        int ui = LoopbackPort.Free();
        var clock = Stopwatch.StartNew();
        ProcessResult up = await _h.KitAsync(["up", Name, "--accel", "tcg", "--dns-upstream", _h.DnsUpstream, "--memory", "1G", "--ui", $"tcp://127.0.0.1:{ui}"], TimeSpan.FromMinutes(15));
        output.WriteLine($"kit up: {clock.Elapsed.TotalSeconds:0.0} s\n{up}");
        Assert.True(up.ExitCode == 0, $"kit up failed\n{up}\n{Log()}");
        Assert.Contains($"kit up: inspector on http://127.0.0.1:{ui}/", up.StandardError, StringComparison.Ordinal);
        using (JsonDocument status = await _h.StatusAsync(Name))
        {
            Assert.Equal($"http://127.0.0.1:{ui}/", status.RootElement.GetProperty("ui").GetString());
        }

        using var api = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{ui}"), Timeout = TimeSpan.FromSeconds(10) };
        await FetchAndSee(api, http, "/machine-first");

        // Down and up again without the flag: config/ui keeps the address.
        Assert.True((await _h.KitAsync(["down", Name], TimeSpan.FromMinutes(3))).ExitCode == 0, Log());
        ProcessResult again = await _h.KitAsync(["up", Name], TimeSpan.FromMinutes(15));
        Assert.True(again.ExitCode == 0, $"{again}\n{Log()}");
        ProcessResult table = await _h.KitAsync(["status", Name], TimeSpan.FromSeconds(60));
        Assert.Contains($"http://127.0.0.1:{ui}/", table.StandardOutput, StringComparison.Ordinal);
        await FetchAndSee(api, http, "/machine-second");
        Assert.True((await _h.KitAsync(["down", Name], TimeSpan.FromMinutes(3))).ExitCode == 0, Log());
    }

    private async Task FetchAndSee(HttpClient api, TinyHttpServer http, string path)
    {
        ProcessResult wget = await _h.ExecAsync(Name, $"busybox wget -q -O /dev/null http://host.internal:{http.Port}{path}");
        Assert.True(wget.ExitCode == 0, wget.ToString());
        string exchanges = "";
        for (int i = 0; i < 50; i++)
        {
            exchanges = await api.GetStringAsync("/api/http", TestContext.Current.CancellationToken);
            using JsonDocument doc = JsonDocument.Parse(exchanges);
            if (doc.RootElement.EnumerateArray().Any(x => x.GetProperty("path").GetString() == path && x.GetProperty("status").GetInt32() == 200))
            {
                return;
            }
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Fail($"{path} with 200 never showed in /api/http:\n{exchanges}");
    }

    private string Log()
    {
        string path = Path.Combine(_h.Data, "kit", "machines", Name, "machine.log");
        return File.Exists(path) ? Text.Tail(File.ReadAllText(path), 6000) : "(no machine log)";
    }
}
