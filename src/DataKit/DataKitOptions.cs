namespace Kit.DataKit;

/// <summary>
/// Server-wide settings of a DataKit service, from `kit data serve`'s flags. One record so that the store, every
/// session and the remotes see the same operator choices.
/// </summary>
public sealed record DataKitOptions
{
    public static readonly DataKitOptions Default = new();

    // Limits: bytes a transaction, a connection and the server may hold in transaction working trees.

    // Durability: what an acknowledged commit survives.

    /// <summary>
    /// Full (the default): objects and the ref are fsync'd, in that order, before a commit, merge or fast-forward is
    /// acknowledged, so it survives a power cut. None: the file system's writeback decides (seconds to lose).
    /// </summary>
    public Durability Durability { get; init; } = Durability.Full;

    // Remotes: which URLs `remotes/*/url` may name, and how long a network operation may take.

    // Commit metadata: the author and committer a transaction gets unless it says otherwise.
}

/// <summary>What an acknowledged commit survives (`kit data serve --durability`).</summary>
public enum Durability
{
    /// <summary>A power cut: every write is fsync'd before it is acknowledged.</summary>
    Full,

    /// <summary>A crash of the server process only: the kernel's page cache is trusted to reach the disk.</summary>
    None,
}
