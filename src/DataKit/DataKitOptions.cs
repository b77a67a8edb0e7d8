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

    // Remotes: which URLs `remotes/*/url` may name, and how long a network operation may take.

    // Commit metadata: the author and committer a transaction gets unless it says otherwise.

    /// <summary>
    /// Default author of commits whose transaction leaves <c>author</c> empty (`--author`); also the default committer
    /// when <see cref="Committer"/> is unset. Null: "datakit &lt;datakit@mobyproject.org&gt;", as the original wrote.
    /// </summary>
    public LibGit2Sharp.Identity? Author { get; init; }

    /// <summary>Default committer (`--committer`); null: <see cref="Author"/>.</summary>
    public LibGit2Sharp.Identity? Committer { get; init; }
}
