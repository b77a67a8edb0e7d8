using System.Globalization;
using Kit.Agent.Protocol;
using Kit.Testing;

namespace Kit.Agent.Tests;

/// <summary>WatchPorts against the real agent, which reads this host's /proc/net (the agent reads whatever /proc it sees).</summary>
public sealed class PortsTests(AgentFixture fixture)
{
    // Opens TCP listeners on 0.0.0.0, 127.0.0.1 and :: (0 when this host has no IPv6) and a UDP socket on 0.0.0.0, all on
    // ephemeral ports, prints the four ports and keeps the sockets until stdin closes.
    private const string Listeners = """
        import socket, sys
        public = socket.socket(); public.bind(("0.0.0.0", 0)); public.listen()
        loop = socket.socket(); loop.bind(("127.0.0.1", 0)); loop.listen()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("0.0.0.0", 0))
        try:
            six = socket.socket(socket.AF_INET6); six.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            six.bind(("::", 0)); six.listen(); six_port = six.getsockname()[1]
        except OSError:
            six_port = 0
        print(public.getsockname()[1], loop.getsockname()[1], udp.getsockname()[1], six_port, flush=True)
        sys.stdin.read()
        """;

    [Fact]
    public async Task Public_listeners_appear_and_disappear_and_loopback_is_ignored()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using IAsyncEnumerator<IReadOnlyList<ListeningPort>> updates = client.WatchPortsAsync(timeout.Token).GetAsyncEnumerator(timeout.Token);
        Assert.True(await updates.MoveNextAsync()); // the current set, at once

        using RunningProcess python = ProcessRunner.Start("python3", ["-c", Listeners]);
        string line = await python.WaitForLineAsync(l => l.Trim().Split(' ').Length == 4, TimeSpan.FromSeconds(20), timeout.Token);
        int[] ports = [.. line.Trim().Split(' ').Select(p => int.Parse(p, CultureInfo.InvariantCulture))];
        (int publicPort, int loopbackPort, int udpPort, int sixPort) = (ports[0], ports[1], ports[2], ports[3]);

        var appeared = System.Diagnostics.Stopwatch.StartNew();
        IReadOnlyList<ListeningPort> seen;
        do
        {
            Assert.True(await updates.MoveNextAsync());
            seen = updates.Current;
            Assert.DoesNotContain(seen, p => p.Port == loopbackPort);
        }
        while (!(seen.Any(p => p.Port == publicPort) && seen.Any(p => p.Port == udpPort) && (sixPort == 0 || seen.Any(p => p.Port == sixPort))));
        Assert.True(appeared.Elapsed < TimeSpan.FromSeconds(3), $"took {appeared.Elapsed}");
        Assert.Contains(new ListeningPort("tcp", "0.0.0.0", publicPort), seen);
        Assert.Contains(new ListeningPort("udp", "0.0.0.0", udpPort), seen);
        if (sixPort != 0)
        {
            Assert.Contains(new ListeningPort("tcp", "::", sixPort), seen);
        }

        python.Process.StandardInput.Close();
        do
        {
            Assert.True(await updates.MoveNextAsync());
            seen = updates.Current;
        }
        while (seen.Any(p => p.Port == publicPort || p.Port == udpPort));
    }
}
