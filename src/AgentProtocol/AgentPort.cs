namespace Kit.Agent.Protocol;

/// <summary>Where the guest agent listens.</summary>
public static class AgentPort
{
    /// <summary>The vsock port the agent accepts on (the host connects with <c>CONNECT 1024</c>).</summary>
    public const uint Vsock = 1024u;
}

/// <summary>The protocol revision both Hello messages carry; a mismatch ends the connection with an error.</summary>
public static class AgentProtocolVersion
{
    public const int Current = 1;
}
