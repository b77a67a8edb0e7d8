namespace Kit.Agent.Protocol;

/// <summary>What the agent said about itself in its Hello.</summary>
public sealed record AgentInfo(int Version, string AgentVersion, string Hostname, string Kernel);

/// <summary>A socket in the guest that accepts from outside: <c>tcp</c> listening, or <c>udp</c> bound and unconnected.</summary>
/// <param name="Protocol"><c>tcp</c> or <c>udp</c>.</param>
/// <param name="Address"><c>0.0.0.0</c>, <c>::</c>, or the non-loopback address it is bound to.</param>
public sealed record ListeningPort(string Protocol, string Address, int Port);

/// <summary>A command to run in the guest.</summary>
/// <param name="Argv">The program (looked up in the merged PATH when it has no '/') and its arguments.</param>
public sealed record ExecRequest(IReadOnlyList<string> Argv)
{
    /// <summary>Merged onto the agent's base (PATH, HOME=/root, TERM with a TTY); these win.</summary>
    public IReadOnlyDictionary<string, string> Env { get; init; } = new Dictionary<string, string>();

    /// <summary>The working directory; null means /root (or / when /root is missing).</summary>
    public string? Workdir { get; init; }

    /// <summary>Run on a new PTY as the controlling terminal of a new session; stdout carries the merged output.</summary>
    public bool Tty { get; init; }

    /// <summary>The terminal size with <see cref="Tty"/>; 0 means 24 rows, 80 columns.</summary>
    public ushort Rows { get; init; }

    public ushort Cols { get; init; }
}
