using Kit.VpnKit.Stack;

namespace Kit.VpnKit.Nat;

/// <summary>
/// The one lock that serialises every call into the pure engine, and the clock the driver passes it.
/// The event loop, link readers, UDP/ICMP/DNS relays and the publish acceptors all go through here.
/// </summary>
internal sealed class EngineGate
{
    public object Sync { get; } = new();
    public Gateway Engine { get; set; } = null!;

    /// <summary>The NAT whose TCP proxies engine callbacks queue; null in engine-only tests.</summary>
    public NatHost? Nat { get; set; }

    /// <summary>The event loop that runs the engine's timers; null until started.</summary>
    public EventLoop? Loop { get; set; }

    /// <summary>Monotonic milliseconds: sleeping or clock changes never fire TCP timers early.</summary>
    public static long Now => Environment.TickCount64;

    /// <summary>
    /// Under <see cref="Sync"/>, after an engine call that may have raised TCP callbacks or armed a timer: moves the
    /// queued proxies' bytes on this thread, and wakes the event loop if a timer is now due before it planned to wake.
    /// </summary>
    public void Settle()
    {
        Nat?.RunQueued();
        Loop?.DeadlineMayHaveMoved();
    }
}
