namespace Kit.DataKit;

/// <summary>
/// Server-wide settings of a DataKit service, from `kit data serve`'s flags. One record so that the store, every
/// session and the remotes see the same operator choices.
/// </summary>
public sealed record DataKitOptions
{
    public static readonly DataKitOptions Default = new();

    // Limits: bytes a transaction, a connection and the server may hold in transaction working trees (the logical
    // size of edited files; spill files are sparse). ENOSPC when one is full; EFBIG for a file larger than a transaction.
    public long MaxTransactionBytes { get; init; } = 8L << 30;
    public long MaxConnectionBytes { get; init; } = 16L << 30;
    public long MaxServerBytes { get; init; } = 32L << 30;

    // Durability: what an acknowledged commit survives.

    /// <summary>
    /// Full (the default): objects and the ref are fsync'd, in that order, before a commit, merge or fast-forward is
    /// acknowledged, so it survives a power cut. None: the file system's writeback decides (seconds to lose).
    /// </summary>
    public Durability Durability { get; init; } = Durability.Full;

    // Remotes: which URLs `remotes/*/url` may name, and how long a network operation may take.

    /// <summary>URL prefixes remotes may use (`--allow-remote`); none by default. See <see cref="Store.RemotePolicy"/>.</summary>
    public Store.RemotePolicy AllowRemotes { get; init; } = Store.RemotePolicy.None;

    /// <summary>How long one fetch or push may run before git is killed (`--remote-timeout`).</summary>
    public TimeSpan RemoteTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How often a replicated branch (`remotes/NAME/sync-branches`) is fetched (`--replicate-interval`).</summary>
    public TimeSpan ReplicateInterval { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Variables added to git's clean environment for remotes (GIT_SSH_COMMAND with a test's key, for one).</summary>
    public IReadOnlyDictionary<string, string> RemoteEnvironment { get; init; } = new Dictionary<string, string>();

    // Commit metadata: the author and committer a transaction gets unless it says otherwise.

    /// <summary>
    /// Default author of commits whose transaction leaves <c>author</c> empty (`--author`); also the default committer
    /// when <see cref="Committer"/> is unset. Null: "datakit &lt;datakit@mobyproject.org&gt;", as the original wrote.
    /// </summary>
    public LibGit2Sharp.Identity? Author { get; init; }

    /// <summary>Default committer (`--committer`); null: <see cref="Author"/>.</summary>
    public LibGit2Sharp.Identity? Committer { get; init; }
}

/// <summary>What an acknowledged commit survives (`kit data serve --durability`).</summary>
public enum Durability
{
    /// <summary>A power cut: every write is fsync'd before it is acknowledged.</summary>
    Full,

    /// <summary>A crash of the server process only: the kernel's page cache is trusted to reach the disk.</summary>
    None,
}
