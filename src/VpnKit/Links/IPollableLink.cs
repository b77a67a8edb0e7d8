using Microsoft.Win32.SafeHandles;

namespace Kit.VpnKit.Links;

/// <summary>
/// A link the gateway's event loop reads itself, without a thread of its own: its descriptor is watched with epoll
/// (level-triggered) and <see cref="TryReceive"/> never blocks. Frames then go from the descriptor through the engine
/// to a host socket on the one thread that was woken.
/// </summary>
internal interface IPollableLink : ILink
{
    /// <summary>Switches the link to non-blocking reads and returns the descriptor to wait on for readability.</summary>
    SafeFileHandle BeginPolling();

    /// <summary>The next frame's length; 0 when the link has closed; -1 when no frame is waiting.</summary>
    int TryReceive(Span<byte> buffer);
}
