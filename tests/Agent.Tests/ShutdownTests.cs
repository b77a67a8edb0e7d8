using Kit.Agent.Protocol;
using Kit.Testing;

namespace Kit.Agent.Tests;

/// <summary>Shutdown against an agent of its own, in dry-run mode: it answers Ok and exits instead of powering off.</summary>
public sealed class ShutdownTests(AgentFixture fixture)
{
    [Fact]
    public async Task Shutdown_is_acknowledged_then_carried_out()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using RunningAgent agent = await RunningAgent.StartAsync(fixture.Executable);
        await using (AgentClient client = await agent.ConnectAsync(timeout.Token))
        {
            await client.ShutdownAsync(timeout.Token);
        }
        ProcessResult result = await agent.Process.WaitAsync(TimeSpan.FromSeconds(10), timeout.Token);
        Assert.False(result.TimedOut);
        Assert.Equal(0, result.ExitCode);
        Assert.Contains("shutting down: Shutdown request from the host", result.StandardError, StringComparison.Ordinal);
    }
}
