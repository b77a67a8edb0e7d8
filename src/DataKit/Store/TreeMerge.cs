using System.Text;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// DataKit's three-way tree merge (reference/datakit.md §2.3), one directory level at a time. Files are whole values
/// (content + kind): no merging inside files. Unchanged subtrees are taken by id without being read.
/// </summary>
public static class TreeMerge
{
    public const string ChangedOnBoth = "Changed on both branches";
    public const string AddDel = "option: add/del";
    public const string AddAdd = "default: add/add and no common ancestor";
    public const string FileVsDir = "File vs dir";

    public static byte[] Marker(string reason) => Encoding.UTF8.GetBytes($"** Conflict **\n{reason}\n");

    /// <summary>Merges; returns the result tree as a working directory and the conflicting paths with reasons.</summary>
    public static WorkDir Merge(GitStore store, ObjectId? baseTree, ObjectId ours, ObjectId theirs, SortedDictionary<string, string> conflicts) =>
        Merge(store, baseTree, ours, theirs, conflicts, "");

    private static Dictionary<string, GitEntry> Index(IReadOnlyList<GitEntry> entries)
    {
        var d = new Dictionary<string, GitEntry>(StringComparer.Ordinal);
        foreach (GitEntry e in entries)
        {
            d[e.Name] = e;
        }
        return d;
    }

    private static void MergeInto(GitStore store, WorkDir into, string prefix, SortedSet<string> names,
        Dictionary<string, GitEntry> b, Dictionary<string, GitEntry> o, Dictionary<string, GitEntry> t, SortedDictionary<string, string> conflicts)
    {
        foreach (string name in names)
        {
            string path = prefix.Length == 0 ? name : $"{prefix}/{name}";
            GitEntry? be = b.TryGetValue(name, out GitEntry x) ? x : null;
            GitEntry? oe = o.TryGetValue(name, out GitEntry y) ? y : null;
            GitEntry? te = t.TryGetValue(name, out GitEntry z) ? z : null;
            bool oDir = oe?.Kind == EntryKind.Dir, tDir = te?.Kind == EntryKind.Dir;
            if ((oDir && te is not null && !tDir) || (tDir && oe is not null && !oDir))
            {
                Conflict(into, name, path, FileVsDir, conflicts);
                continue;
            }
            if (oDir || tDir)
            {
                ObjectId? bt = be?.Kind == EntryKind.Dir ? be.Value.Id : null;
                // A side without the directory counts as an empty one.
                WorkDir sub = Merge(store, bt, oe?.Id ?? GitStore.EmptyTree, te?.Id ?? GitStore.EmptyTree, conflicts, path);
                into.Children[name] = sub;
                continue;
            }
            // Files: option merge of (content, kind) values; a base directory counts as "no value".
            GitEntry? bv = be?.Kind == EntryKind.Dir ? null : be;
            if (Same(oe, te))
            {
                Keep(into, name, oe);
            }
            else if (Same(oe, bv))
            {
                Keep(into, name, te);
            }
            else if (Same(te, bv))
            {
                Keep(into, name, oe);
            }
            else
            {
                string reason = bv is null && oe is not null && te is not null ? AddAdd
                    : oe is null || te is null ? AddDel
                    : ChangedOnBoth;
                Conflict(into, name, path, reason, conflicts);
            }
        }
    }

    private static WorkDir Merge(GitStore store, ObjectId? baseTree, ObjectId ours, ObjectId theirs, SortedDictionary<string, string> conflicts, string prefix)
    {
        // Whole subtrees equal on two sides are taken by id, unread.
        if (ours == theirs || theirs == (baseTree ?? GitStore.EmptyTree))
        {
            return new WorkDir(store, ours);
        }
        if (ours == (baseTree ?? GitStore.EmptyTree))
        {
            return new WorkDir(store, theirs);
        }
        var result = new WorkDir(store, null);
        result.Touch();
        Dictionary<string, GitEntry> b = Index(baseTree is null ? [] : store.ReadTree(baseTree));
        Dictionary<string, GitEntry> o = Index(store.ReadTree(ours));
        Dictionary<string, GitEntry> t = Index(store.ReadTree(theirs));
        var names = new SortedSet<string>(o.Keys, StringComparer.Ordinal);
        names.UnionWith(t.Keys);
        MergeInto(store, result, prefix, names, b, o, t, conflicts);
        return result;
    }

    private static bool Same(GitEntry? a, GitEntry? b) => a is null ? b is null : b is not null && a.Value.Kind == b.Value.Kind && a.Value.Id == b.Value.Id;

    private static void Keep(WorkDir into, string name, GitEntry? e)
    {
        if (e is GitEntry v)
        {
            into.Children[name] = new WorkFile(v.Kind, v.Id);
        }
    }

    private static void Conflict(WorkDir into, string name, string path, string reason, SortedDictionary<string, string> conflicts)
    {
        var f = new WorkFile(EntryKind.File, null);
        f.Replace(Marker(reason));
        into.Children[name] = f;
        conflicts[path] = reason;
    }
}

/// <summary>Leaf-level differences between two trees: "+ path", "- path", "* path" (added, removed, updated).</summary>
public static class TreeDiff
{
    public static List<string> Diff(GitStore store, ObjectId from, ObjectId to)
    {
        var lines = new List<(string Path, char Op)>();
        Walk(store, from, to, "", lines);
        lines.Sort((a, b) => string.CompareOrdinal(a.Path, b.Path));
        return lines.Select(l => $"{l.Op} {l.Path}").ToList();
    }

    private static void Walk(GitStore store, ObjectId? from, ObjectId? to, string prefix, List<(string, char)> lines)
    {
        if (from == to)
        {
            return;
        }
        var a = (from is null ? GitTreeListing.Empty : store.ReadTree(from)).ToDictionary(e => e.Name, StringComparer.Ordinal);
        var b = (to is null ? GitTreeListing.Empty : store.ReadTree(to)).ToDictionary(e => e.Name, StringComparer.Ordinal);
        foreach (string name in a.Keys.Union(b.Keys))
        {
            string path = prefix.Length == 0 ? name : $"{prefix}/{name}";
            GitEntry? x = a.TryGetValue(name, out GitEntry ea) ? ea : null;
            GitEntry? y = b.TryGetValue(name, out GitEntry eb) ? eb : null;
            bool xd = x?.Kind == EntryKind.Dir, yd = y?.Kind == EntryKind.Dir;
            if (xd || yd)
            {
                Walk(store, xd ? x!.Value.Id : null, yd ? y!.Value.Id : null, path, lines);
                if (x is not null && !xd)
                {
                    lines.Add((path, '-'));
                }
                if (y is not null && !yd)
                {
                    lines.Add((path, '+'));
                }
                continue;
            }
            if (x is null)
            {
                lines.Add((path, '+'));
            }
            else if (y is null)
            {
                lines.Add((path, '-'));
            }
            else if (x.Value.Id != y.Value.Id || x.Value.Kind != y.Value.Kind)
            {
                lines.Add((path, '*'));
            }
        }
    }
}
