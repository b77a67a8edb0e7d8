namespace Kit.VpnKit.Links;

/// <summary>
/// One guest-facing Ethernet link: a TAP device, a QEMU socket, a hyperkit VMN3T connection. Frames carry no FCS and
/// no virtio-net header. Receive blocks on the link's own thread; Send may be called from any thread.
/// </summary>
public interface ILink : IDisposable
{
    string Name { get; }

    /// <summary>Largest frame the link may carry (MTU + 14).</summary>
    int MaxFrame { get; }

    /// <summary>Blocks for the next frame; returns its length, or 0 when the link has closed.</summary>
    int Receive(Span<byte> buffer);

    void Send(ReadOnlySpan<byte> frame);

    /// <summary>The last received frame came from a local kernel with offloaded (partial or skipped) checksums.</summary>
    bool LastFrameTrusted => false;

    /// <summary>Sends a TCP frame whose checksum is partial, cut at <paramref name="segmentSize"/> (offload links only).</summary>
    void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize) => Send(frame);
}
