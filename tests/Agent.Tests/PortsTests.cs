using System.Globalization;
using Kit.Agent.Protocol;
using Kit.Testing;

namespace Kit.Agent.Tests;

/// <summary>WatchPorts against the real agent, which reads this host's /proc/net (the agent reads whatever /proc it sees).</summary>
public sealed class PortsTests(AgentFixture fixture)
{
    // Opens a TCP listener on 0.0.0.0 and one on 127.0.0.1 (ephemeral ports), prints both, and keeps them until stdin closes.
    private const string Listeners = """
        import socket, sys
        public = socket.socket(); public.bind(("0.0.0.0", 0)); public.listen()
        loop = socket.socket(); loop.bind(("127.0.0.1", 0)); loop.listen()
        print(public.getsockname()[1], loop.getsockname()[1], flush=True)
        sys.stdin.read()
        """;

    [Fact]
    public async Task A_public_listener_appears_and_disappears_and_loopback_is_ignored()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using IAsyncEnumerator<IReadOnlyList<ListeningPort>> updates = client.WatchPortsAsync(timeout.Token).GetAsyncEnumerator(timeout.Token);
        Assert.True(await updates.MoveNextAsync()); // the current set, at once

        using RunningProcess python = ProcessRunner.Start("python3", ["-c", Listeners]);
        string line = await python.WaitForLineAsync(l => l.Trim().Split(' ').Length == 2, TimeSpan.FromSeconds(20), timeout.Token);
        string[] ports = line.Trim().Split(' ');
        int publicPort = int.Parse(ports[0], CultureInfo.InvariantCulture);
        int loopbackPort = int.Parse(ports[1], CultureInfo.InvariantCulture);

        var appeared = System.Diagnostics.Stopwatch.StartNew();
        IReadOnlyList<ListeningPort> seen;
        do
        {
            Assert.True(await updates.MoveNextAsync());
            seen = updates.Current;
            Assert.DoesNotContain(seen, p => p.Port == loopbackPort);
        }
        while (!seen.Any(p => p.Port == publicPort));
        Assert.True(appeared.Elapsed < TimeSpan.FromSeconds(3), $"took {appeared.Elapsed}");
        Assert.Contains(new ListeningPort("tcp", "0.0.0.0", publicPort), seen);

        python.Process.StandardInput.Close();
        do
        {
            Assert.True(await updates.MoveNextAsync());
            seen = updates.Current;
        }
        while (seen.Any(p => p.Port == publicPort));
    }
}
