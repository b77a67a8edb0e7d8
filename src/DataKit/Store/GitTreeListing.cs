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
/// A least-recently-used cache of decoded trees keyed by object id, bounded by the total number of entries held
/// (a tree's memory is roughly proportional to its width). Trees are content-addressed, so entries never go stale.
/// Not thread-safe: <see cref="GitStore"/> calls it under its lock.
/// </summary>
internal sealed class TreeCache(long maxEntries)
{
    private readonly Dictionary<ObjectId, LinkedListNode<(ObjectId Id, GitTreeListing Tree)>> _map = [];
    private readonly LinkedList<(ObjectId Id, GitTreeListing Tree)> _order = new();
    private long _entries;

    public bool TryGet(ObjectId id, out GitTreeListing tree)
    {
        if (_map.TryGetValue(id, out LinkedListNode<(ObjectId Id, GitTreeListing Tree)>? node))
        {
            _order.Remove(node);
            _order.AddFirst(node);
            tree = node.Value.Tree;
            return true;
        }
        tree = GitTreeListing.Empty;
        return false;
    }

    public void Add(ObjectId id, GitTreeListing tree)
    {
        if (_map.ContainsKey(id))
        {
            return;
        }
        _map[id] = _order.AddFirst((id, tree));
        _entries += tree.Count + 1;
        while (_entries > maxEntries && _order.Last is { } last && last != _order.First)
        {
            _order.RemoveLast();
            _map.Remove(last.Value.Id);
            _entries -= last.Value.Tree.Count + 1;
        }
    }
}
