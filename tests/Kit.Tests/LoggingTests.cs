using System.Text.Json;
using Kit.Testing;

namespace Kit.Tests;

/// <summary>
/// Issue 14, "Visibility": the global log options. Text lines carry a UTC timestamp, a level word and a short category
/// (no hashed event id); --log-format json writes one JSON object per line; a bad value is one line.
/// </summary>
public sealed class LoggingTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-logging-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public async Task TextLinesHaveATimestampALevelAndTheCategory()
    {
        string line = await FirstLogLineAsync("--log-level", "info");
        Assert.Matches(@"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info datakit: 9P listening on 127\.0\.0\.1:\d+$", line);
    }

    [Fact]
    public async Task JsonLinesParse()
    {
        string line = await FirstLogLineAsync("-v", "--log-format", "json");
        using JsonDocument doc = JsonDocument.Parse(line);
        Assert.Equal("Information", doc.RootElement.GetProperty("LogLevel").GetString());
        Assert.Equal("datakit", doc.RootElement.GetProperty("Category").GetString());
        Assert.StartsWith("2", doc.RootElement.GetProperty("Timestamp").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task QuietWritesNoInformation()
    {
        using RunningProcess kit = StartServe("-q");
        string serving = await kit.WaitForLineAsync(l => l.StartsWith("kit data: serving", StringComparison.Ordinal), TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        kit.Process.Kill();
        ProcessResult r = await kit.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.DoesNotContain("listening", r.Output, StringComparison.Ordinal);
        Assert.Matches(@"on tcp://127\.0\.0\.1:\d+$", serving);
    }

    [Theory]
    [InlineData("--log-level", "loud", "kit: --log-level: 'loud' is not one of trace, debug, info, warning, error, none")]
    [InlineData("--log-format", "xml", "kit: --log-format: 'xml' is not one of text, json")]
    public void ABadValueIsOneLine(string option, string value, string expected)
    {
        ProcessResult result = KitCli.Run(option, value, "data", "serve");
        Assert.NotEqual(0, result.ExitCode);
        Assert.Equal(expected, result.StandardError.Trim());
    }

    private RunningProcess StartServe(params string[] logOptions) => ProcessRunner.Start(KitCli.ExecutablePath,
        [.. logOptions, "data", "serve", "--git", Path.Combine(_dir.FullName, "store"), "--listen-9p", "tcp://127.0.0.1:0"]);

    private async Task<string> FirstLogLineAsync(params string[] logOptions)
    {
        using RunningProcess kit = StartServe(logOptions);
        string line = await kit.WaitForLineAsync(l => l.Contains("9P listening", StringComparison.Ordinal), TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        kit.Process.Kill();
        return line;
    }
}
