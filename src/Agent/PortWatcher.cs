using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>
/// Serves WatchPorts: the listening set at once, then again whenever it changes, polled every 250 ms (the kernel has
/// no notification for new listeners that does not need netlink sock_diag privileges and parsing; polling is cheap).
/// Ends when the host closes the connection or sends anything.
/// </summary>
internal static class PortWatcher
{
    private static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(250);

    public static async Task<string> RunAsync(FrameReader reader, FrameWriter writer, string procNet, CancellationToken ct)
    {
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(ct);
        // The host says nothing more on this connection; a read completing (end of stream or a frame) means it is done.
        Task<Frame?> hostSpoke = reader.ReadAsync(stop.Token).AsTask();
        List<ListeningPort>? last = null;
        int updates = 0;
        using var timer = new PeriodicTimer(Interval);
        try
        {
            while (true)
            {
                List<ListeningPort> now = ProcNet.Read(procNet);
                if (last is null || !Same(last, now))
                {
                    await writer.WriteJsonAsync(FrameType.Ports, new PortsMessage([.. now]), AgentJsonContext.Default.PortsMessage, stop.Token)
                        .ConfigureAwait(false);
                    last = now;
                    updates++;
                }
                Task tick = timer.WaitForNextTickAsync(stop.Token).AsTask();
                if (await Task.WhenAny(tick, hostSpoke).ConfigureAwait(false) == hostSpoke)
                {
                    Frame? frame = await hostSpoke.ConfigureAwait(false);
                    if (frame is not null)
                    {
                        throw new AgentProtocolException($"unexpected {frame.Value.Type} frame during WatchPorts");
                    }
                    return $"watch ports: host closed after {updates} updates";
                }
                await tick.ConfigureAwait(false);
            }
        }
        finally
        {
            await stop.CancelAsync().ConfigureAwait(false);
            try
            {
                await hostSpoke.ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or IOException or AgentProtocolException or ObjectDisposedException)
            {
            }
        }
    }

    private static bool Same(List<ListeningPort> a, List<ListeningPort> b)
    {
        if (a.Count != b.Count)
        {
            return false;
        }
        for (int i = 0; i < a.Count; i++)
        {
            if (a[i] != b[i])
            {
                return false;
            }
        }
        return true;
    }
}
