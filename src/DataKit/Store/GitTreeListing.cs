using System.Collections;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// A decoded tree: its entries in Git's order, plus a name index so a walk step costs one hash lookup rather than a
/// scan of the directory (a 1,000-entry directory made every read of one of its files scan it about three times).
/// Immutable, like the tree object it decodes, so one instance is shared by every reader.
/// </summary>
public sealed class GitTreeListing : IReadOnlyList<GitEntry>
{
    // Small directories are scanned: cheaper than hashing, and most trees are small.
    private const int IndexThreshold = 8;
    private readonly GitEntry[] _entries;
    private readonly Dictionary<string, int>? _byName;

    public static readonly GitTreeListing Empty = new([]);

    public GitTreeListing(GitEntry[] entries)
    {
        _entries = entries;
        if (entries.Length > IndexThreshold)
        {
            _byName = new Dictionary<string, int>(entries.Length, StringComparer.Ordinal);
            for (int i = 0; i < entries.Length; i++)
            {
                _byName.TryAdd(entries[i].Name, i);
            }
        }
    }

    public int Count => _entries.Length;

    public GitEntry this[int index] => _entries[index];

    /// <summary>The entry called <paramref name="name"/>; null when absent.</summary>
    public GitEntry? Find(string name)
    {
        if (_byName is not null)
        {
            return _byName.TryGetValue(name, out int i) ? _entries[i] : null;
        }
        foreach (GitEntry e in _entries)
        {
            if (e.Name == name)
            {
                return e;
            }
        }
        return null;
    }

    public IEnumerator<GitEntry> GetEnumerator() => ((IEnumerable<GitEntry>)_entries).GetEnumerator();

    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();
}

/// <summary>
/// A least-recently-used cache bounded by a total weight (for trees, the entries held: a tree's memory is roughly
/// proportional to its width; for commits, 1 each). The newest item always stays, whatever its weight. Keys are
/// content addresses, so entries never go stale. Not thread-safe: <see cref="GitStore"/> calls it under its lock.
/// </summary>
internal sealed class LruCache<TKey, TValue>(long maxWeight, Func<TValue, long> weight)
    where TKey : notnull
{
    private readonly Dictionary<TKey, LinkedListNode<(TKey Key, TValue Value)>> _map = [];
    private readonly LinkedList<(TKey Key, TValue Value)> _order = new();

    /// <summary>The summed weight of the items held.</summary>
    public long Weight { get; private set; }

    public int Count => _map.Count;

    public bool TryGet(TKey key, [System.Diagnostics.CodeAnalysis.MaybeNullWhen(false)] out TValue value)
    {
        if (_map.TryGetValue(key, out LinkedListNode<(TKey Key, TValue Value)>? node))
        {
            _order.Remove(node);
            _order.AddFirst(node);
            value = node.Value.Value;
            return true;
        }
        value = default;
        return false;
    }

    public void Add(TKey key, TValue value)
    {
        if (_map.ContainsKey(key))
        {
            return;
        }
        _map[key] = _order.AddFirst((key, value));
        Weight += weight(value);
        while (Weight > maxWeight && _order.Last is { } last && last != _order.First)
        {
            _order.RemoveLast();
            _map.Remove(last.Value.Key);
            Weight -= weight(last.Value.Value);
        }
    }
}
