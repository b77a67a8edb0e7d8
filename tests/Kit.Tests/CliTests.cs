using Kit.Testing;

namespace Kit.Tests;

/// <summary>The CLI contract of design.md: help on every command, one-line errors with a non-zero exit code.</summary>
public sealed class CliTests
{
    [Theory]
    [InlineData("guest")]
    [InlineData("up")]
    public void HelpListsTheCommand(string command)
    {
        ProcessResult result = KitCli.Run("--help");
        Assert.Equal(0, result.ExitCode);
        Assert.Matches($@"(?m)^\s+{command}\s", result.StandardOutput);
    }

    [Fact]
    public void UnknownCommandIsAnErrorWithoutStackTrace()
    {
        ProcessResult result = KitCli.Run("no-such-command");
        Assert.NotEqual(0, result.ExitCode);
        Assert.DoesNotContain("   at ", result.Output, StringComparison.Ordinal);
    }

    /// <summary>A flag System.CommandLine cannot parse is one line too, not the error followed by the whole help.</summary>
    [Theory]
    [InlineData("kit: Cannot parse argument 'x' for option '--cpus' as expected type 'System.Int32'.", "demo", "--cpus", "x")]
    [InlineData("kit: Unrecognized command or argument '--bogus'.", "data", "serve", "--bogus")]
    public void AParseErrorIsOneLine(string expected, params string[] args)
    {
        ProcessResult result = KitCli.Run(args);
        Assert.Equal(1, result.ExitCode);
        Assert.Equal(expected, result.StandardError.Trim());
        Assert.Equal("", result.StandardOutput);
    }

    /// <summary>guest/build.sh's "step: " lines are what `kit guest build` shows as progress; other lines pass through.</summary>
    [Theory]
    [InlineData("step: unpacking", "unpacking")]
    [InlineData("guest/build.sh: built 6.1.0 in 38 s", null)]
    [InlineData("step:unpacking", null)]
    public void GuestBuildStepsAreTheScriptsStepLines(string line, string? step) =>
        Assert.Equal(step, Kit.Cli.Commands.GuestCommand.Step(line));

    [Theory]
    [InlineData("progress: 1048576 73400320", 1048576L, 73400320L)]
    [InlineData("progress: x 1", null, null)]
    [InlineData("step: unpacking", null, null)]
    public void GuestBuildProgressLinesParse(string line, long? bytes, long? total)
    {
        (long Bytes, long Total)? p = Kit.Cli.Commands.GuestCommand.Progress(line);
        Assert.Equal(bytes, p?.Bytes);
        Assert.Equal(total, p?.Total);
    }

    /// <summary>`kit guest build --json` (from the cache ./test filled): one JSON object naming two existing files.</summary>
    [Fact]
    public void GuestBuildJsonNamesTheKernelAndInitrd()
    {
        ProcessResult r = KitCli.Run("guest", "build", "--json");
        Assert.True(r.ExitCode == 0, r.Output);
        using var doc = System.Text.Json.JsonDocument.Parse(r.StandardOutput);
        Assert.True(File.Exists(doc.RootElement.GetProperty("kernel").GetString()));
        Assert.True(File.Exists(doc.RootElement.GetProperty("initrd").GetString()));
    }

    [Fact]
    public void UpRejectsABadMemorySizeInOneLine()
    {
        ProcessResult result = KitCli.Run("up", "--memory", "lots");
        Assert.Equal(1, result.ExitCode);
        Assert.Equal("kit: --memory: cannot use \"lots\" (at least 256M, e.g. 2G)", result.StandardError.Trim());
    }

    /// <summary>Security review finding 5: a listen path that holds a file is refused in one line, and the file kept.</summary>
    [Fact]
    public void DataServeRefusesToListenOverARegularFile()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-cli-listen-");
        try
        {
            string victim = Path.Combine(dir.FullName, "victim");
            File.WriteAllText(victim, "keep me");

            ProcessResult result = KitCli.Run("data", "serve", "--git", Path.Combine(dir.FullName, "store"), "--listen-9p", $"unix:{victim}");

            Assert.Equal(1, result.ExitCode);
            Assert.Matches($"^kit: cannot listen on unix:{victim}: .*not a socket", result.StandardError.Trim());
            Assert.Equal("keep me", File.ReadAllText(victim));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    /// <summary>
    /// Security review finding 1: `kit guest build` once wrote its script to $TMPDIR/kit-guest-build-PID.sh and ran it
    /// as root, so a planted FIFO there fed root's bash. Now nothing is written to TMPDIR: with TMPDIR pointing at a
    /// regular file (no file can be made under it) the build still answers from the cache that ./test filled.
    /// </summary>
    [Fact]
    public async Task GuestBuildWritesNothingIntoTmpdir()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-cli-tmpdir-");
        try
        {
            string notADirectory = Path.Combine(dir.FullName, "file");
            File.WriteAllText(notADirectory, "");

            ProcessResult result = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["guest", "build"], TimeSpan.FromMinutes(10),
                environment: new Dictionary<string, string?> { ["TMPDIR"] = notADirectory },
                cancellationToken: TestContext.Current.CancellationToken);

            Assert.True(result.ExitCode == 0, result.Output);
            Assert.Matches("(?m)^kernel=/.+/vmlinuz$", result.StandardOutput);
            Assert.Equal("", File.ReadAllText(notADirectory));
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
