namespace Kit.NineP.Server;

/// <summary>Limits of one server. Everything a peer can make us hold is bounded here.</summary>
public sealed record NinePServerOptions
{
    /// <summary>Largest msize we accept (Linux allows up to 1 MiB over TCP; the original capped at 16 KiB).</summary>
    public uint MaxMessageSize { get; init; } = 1024 * 1024 + 4096;
    /// <summary>Smallest msize we accept in Tversion; below it replies "unknown".</summary>
    public uint MinMessageSize { get; init; } = 4096;
    /// <summary>Fids one connection may hold at once; beyond it new fids get EMFILE.</summary>
    public int MaxFidsPerConnection { get; init; } = 16384;
    /// <summary>Requests in flight per connection (blocked stream reads count); beyond it the reader waits.</summary>
    public int MaxInflightPerConnection { get; init; } = 1024;
    /// <summary>Connections at once; beyond it new ones are closed straight away.</summary>
    public int MaxConnections { get; init; } = 1024;
}
