using Kit.Testing;

namespace Kit.Tests;

/// <summary>The CLI contract of design.md: help on every command, one-line errors with a non-zero exit code.</summary>
public sealed class CliTests
{
    [Fact]
    public void HelpListsTheGuestCommand()
    {
        (int code, string output) = KitCli.Run("--help");
        Assert.Equal(0, code);
        Assert.Contains("guest", output, StringComparison.Ordinal);
    }

    [Fact]
    public void UnknownCommandIsAnErrorWithoutStackTrace()
    {
        (int code, string output) = KitCli.Run("no-such-command");
        Assert.NotEqual(0, code);
        Assert.DoesNotContain("   at ", output, StringComparison.Ordinal);
    }
}
