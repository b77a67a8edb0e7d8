using Kit.VpnKit.Stack;

namespace Kit.VpnKit.Nat;

/// <summary>
/// The one lock that serialises every call into the pure engine, and the clock the driver passes it.
/// Link readers, socket pumps and the timer all go through here.
/// </summary>
internal sealed class EngineGate
{
    public object Sync { get; } = new();
    public Gateway Engine { get; set; } = null!;

    /// <summary>Monotonic milliseconds: sleeping or clock changes never fire TCP timers early.</summary>
    public static long Now => Environment.TickCount64;
}
