using System.Text;
using Kit.DataKit.Store;
using LibGit2Sharp;

namespace Kit.Cli.Machines;

/// <summary>
/// Small text files on one DataKit branch, read and written straight through the git store: each <see cref="Commit"/>
/// is one git commit (so <c>git log machine-NAME</c> is the machine's history), made with a compare-and-swap of the
/// branch head and retried when another writer (a DataKit transaction from the guest or a host tool, another kit
/// process) moved it meanwhile. Their changes are kept: only the named paths are replaced.
/// </summary>
internal sealed class BranchFiles(GitStore store, string branch)
{
    private const int MaxAttempts = 20;

    public string Branch { get; } = branch;

    public ObjectId? Head => store.GetHead(Branch);

    /// <summary>The text of <paramref name="path"/> (slash-separated) at the head; null when absent.</summary>
    public string? Read(string path) => Read(Head, path);

    public string? Read(ObjectId? commit, string path)
    {
        if (commit is null || store.GetCommit(commit) is not { } info)
        {
            return null;
        }
        GitEntry? entry = store.Resolve(info.Tree, path.Split('/'));
        return entry is { Kind: EntryKind.File or EntryKind.Exec } e ? Encoding.UTF8.GetString(store.ReadBlob(e.Id)) : null;
    }

    /// <summary>
    /// Sets each path to its text (null removes it) in one commit; no commit when nothing changes. Returns the head.
    /// </summary>
    public ObjectId? Commit(IReadOnlyDictionary<string, string?> changes, string message)
    {
        for (int attempt = 0; attempt < MaxAttempts; attempt++)
        {
            ObjectId? head = Head;
            ObjectId baseTree = head is null ? GitStore.EmptyTree : store.GetCommit(head)!.Tree;
            ObjectId tree = baseTree;
            foreach ((string path, string? text) in changes)
            {
                tree = Put(tree, path.Split('/'), 0, text is null ? null : store.WriteBlob(Encoding.UTF8.GetBytes(text)));
            }
            if (tree == baseTree && head is not null)
            {
                return head;
            }
            ObjectId commit = store.WriteCommit(tree, head is null ? [] : [head], message);
            if (store.TrySetHead(Branch, commit, head, "kit: " + message))
            {
                return commit;
            }
        }
        throw new IOException($"DataKit branch {Branch} kept changing under kit; gave up after {MaxAttempts} attempts");
    }

    /// <summary>A copy of <paramref name="tree"/> with the file at path[depth..] set to <paramref name="blob"/> (or removed).</summary>
    private ObjectId Put(ObjectId tree, string[] path, int depth, ObjectId? blob)
    {
        var entries = new List<GitEntry>(store.ReadTree(tree));
        string name = path[depth];
        int at = entries.FindIndex(e => e.Name == name);
        GitEntry? existing = at >= 0 ? entries[at] : null;
        if (at >= 0)
        {
            entries.RemoveAt(at);
        }
        if (depth == path.Length - 1)
        {
            if (blob is not null)
            {
                entries.Add(new GitEntry(name, EntryKind.File, blob));
            }
        }
        else
        {
            ObjectId child = Put(existing is { Kind: EntryKind.Dir } d ? d.Id : GitStore.EmptyTree, path, depth + 1, blob);
            if (child != GitStore.EmptyTree)
            {
                entries.Add(new GitEntry(name, EntryKind.Dir, child));
            }
        }
        return store.WriteTree(entries);
    }
}
