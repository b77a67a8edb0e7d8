namespace Kit.Agent.Protocol;

/// <summary>The type byte after a frame's length (docs/agent-protocol.md lists who sends what, when).</summary>
public enum FrameType : byte
{
    // Both ways.
    Hello = 0x01,
    Error = 0x02,
    Ok = 0x03,

    // Requests: exactly one per connection, right after Hello.
    Exec = 0x10,
    WatchPorts = 0x11,
    ForwardUnix = 0x12,
    Shutdown = 0x13,

    // Exec, host to agent.
    Stdin = 0x20,
    StdinClose = 0x21,
    Signal = 0x22,
    Resize = 0x23,

    // Exec, agent to host.
    Started = 0x30,
    Stdout = 0x31,
    Stderr = 0x32,
    Exit = 0x33,

    // WatchPorts, agent to host.
    Ports = 0x40,
}
