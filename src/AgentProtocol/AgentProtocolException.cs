namespace Kit.Agent.Protocol;

/// <summary>
/// The peer broke the protocol (bad frame, unexpected message, version mismatch, early end of stream). The only
/// exception a reader raises for bad bytes, so the caller closes that one connection and carries on.
/// </summary>
public sealed class AgentProtocolException : Exception
{
    public AgentProtocolException(string message) : base(message)
    {
    }

    public AgentProtocolException(string message, Exception inner) : base(message, inner)
    {
    }
}

/// <summary>
/// The agent refused an Exec request. <see cref="IsNotFound"/> is set when the program does not exist (ENOENT): the
/// host reports that as exit code 127, as a shell does; any other refusal (permission denied, bad workdir) as 126.
/// </summary>
public sealed class AgentExecException : Exception
{
    public AgentExecException(string message, bool isNotFound) : base(message)
    {
        IsNotFound = isNotFound;
    }

    public bool IsNotFound { get; }

    /// <summary>The exit code a shell would give: 127 for not found, else 126.</summary>
    public int ShellExitCode => IsNotFound ? 127 : 126;
}
