using System.Collections.Concurrent;
using Kit.VpnKit.Links;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>An Ethernet link in memory: frames the test injects, frames the gateway sent (the gateway reads it on its own thread).</summary>
internal sealed class MemoryLink : ILink
{
    private readonly BlockingCollection<byte[]> _toGateway = [];

    public BlockingCollection<byte[]> FromGateway { get; } = [];
    public string Name => "memory";
    public int MaxFrame => 1514;

    public void Inject(byte[] frame) => _toGateway.Add(frame);

    public int Receive(Span<byte> buffer)
    {
        try
        {
            byte[] f = _toGateway.Take();
            f.CopyTo(buffer);
            return f.Length;
        }
        catch (InvalidOperationException)
        {
            return 0;
        }
    }

    public void Send(ReadOnlySpan<byte> frame) => FromGateway.Add(frame.ToArray());

    public void Dispose() => _toGateway.CompleteAdding();
}
