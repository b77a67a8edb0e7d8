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

    // Remotes: which URLs `remotes/*/url` may name, and how long a network operation may take.

    // Commit metadata: the author and committer a transaction gets unless it says otherwise.
}
