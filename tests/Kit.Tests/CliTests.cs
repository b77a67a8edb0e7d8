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

    [Fact]
    public void UpRejectsABadMemorySizeInOneLine()
    {
        ProcessResult result = KitCli.Run("up", "--memory", "lots");
        Assert.Equal(1, result.ExitCode);
        Assert.Equal("kit: --memory: cannot parse \"lots\" (use e.g. 512M or 1G)", result.StandardError.Trim());
    }
}
