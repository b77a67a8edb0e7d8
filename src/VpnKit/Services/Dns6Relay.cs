using Kit.VpnKit.Nat;
using Kit.VpnKit.Stack;

namespace Kit.VpnKit.Services;

/// <summary>
/// DNS over IPv6 at the gateway: a query to [gateway]:53 goes to the same forwarder as IPv4 queries do, and the answer
/// back to the guest through the engine, under the engine lock (as <see cref="NatHost"/> answers IPv4 queries).
/// </summary>
internal sealed class Dns6Relay(EngineGate gate, DnsForwarder forwarder) : IDnsQueries
{
    public void QueryReceived(in Udp6Flow flow, ReadOnlySpan<byte> query) => _ = AnswerAsync(flow, query.ToArray());

    private async Task AnswerAsync(Udp6Flow flow, byte[] query)
    {
        // The forwarder's per-guest bound is keyed by an IPv4 address; IPv6 guests share the key 0 (the total bound holds).
        byte[]? answer = await forwarder.ResolveAsync(query).ConfigureAwait(false);
        if (answer is null)
        {
            return;
        }
        lock (gate.Sync)
        {
            if (!gate.Engine.SendUdp6(flow, answer, EngineGate.Now) && DnsForwarder.Truncated(answer) is { } truncated)
            {
                gate.Engine.SendUdp6(flow, truncated, EngineGate.Now);
            }
        }
    }
}
