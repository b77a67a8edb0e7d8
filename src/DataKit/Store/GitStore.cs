using System.Text;
using Kit.NineP.Protocol;
using Kit.NineP.Vfs;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>What a tree entry is, as DataKit sees it: Git modes 100644, 100755, 120000 and 040000 only.</summary>
public enum EntryKind : byte
{
    File,
    Exec,
    Link,
    Dir,
}

/// <summary>One entry of a Git tree.</summary>
public readonly record struct GitEntry(string Name, EntryKind Kind, ObjectId Id)
{
    /// <summary>The tree.live / trees/ prefix: D-, F-, X- or L-.</summary>
    public string Line => $"{Prefix(Kind)}-{Id.Sha}";

    public static char Prefix(EntryKind kind) => kind switch { EntryKind.Dir => 'D', EntryKind.Exec => 'X', EntryKind.Link => 'L', _ => 'F' };
}

/// <summary>A commit's fields.</summary>
public sealed record CommitInfo(ObjectId Id, ObjectId Tree, IReadOnlyList<ObjectId> Parents, string Message, DateTimeOffset When);

/// <summary>
/// The object store and branches: a real Git repository through LibGit2Sharp, so stock git reads and writes it.
/// LibGit2Sharp's Repository is not thread-safe, so every call takes one lock; calls are short (one object or ref).
/// Objects are written before refs and refs are updated through libgit2's lock-file-and-rename, so a process killed
/// at any point leaves a repository that passes git fsck, holding every commit whose ref update returned.
/// </summary>
public sealed class GitStore : IDisposable
{
    public static readonly ObjectId EmptyTree = new("4b825dc642cb6eb9a060e54bf8d69288fbee4904");
    private readonly Repository _repo;
    private readonly Lock _gate = new();
    // Blobs, by bytes held, each charged a fixed overhead for its id, array header and slot: counting content alone
    // let a store of small files hold ~700,000 of them (hundreds of MB) under a "32 MiB" bound. The cache is for a
    // file read in chunks (every 9P read asks for the whole blob); a transaction's working copy is read uncached.
    private readonly LruCache<ObjectId, byte[]> _blobCache = new(MaxCachedBlobBytes, b => b.Length + BlobEntryOverhead);
    private const int BlobEntryOverhead = 256;
    // Trees and commits never change once written, so their decoded forms are cached, in two tiers each (issue 12,
    // docs/soak.md). What this store has just written goes to a small tier: a commit loop reads each new tree and
    // commit back once or twice (the next transaction starts from them) and then never again, so they must be let go
    // young. What is read from the repository goes to the large LRU tier (bounded by tree entries, about 150 bytes
    // each, so ~2.5 MB; and by commit count), which repeated reads (ro/ walks, snapshots/, merges) reuse. With one
    // tier, every commit's root tree and commit entered the large caches and lived there for hundreds (trees) to
    // thousands (commits, then cleared all at once) of commits: long enough to be promoted to the GC's oldest
    // generation and die there, where background collections sweep without compacting. The soak measured the result:
    // gen2 growing by its fragmentation for minutes between compacting collections, RSS in a sawtooth of ~15 MiB.
    // libgit2's own object cache is off (Open): these tiers hold the decoded forms.
    private readonly LruCache<ObjectId, GitTreeListing> _treeCache = new(16_384, TreeWeight);
    private readonly LruCache<ObjectId, GitTreeListing> _writtenTrees = new(1_024, TreeWeight);
    private readonly LruCache<ObjectId, CommitInfo> _commitCache = new(4_096, _ => 1);
    private readonly LruCache<ObjectId, CommitInfo> _writtenCommits = new(16, _ => 1);
    private const long MaxCachedBlobBytes = 32L * 1024 * 1024;
    // Branch heads by name, with the (mtime ticks, size) of the loose ref file they were read from (see GetHead).
    private readonly Dictionary<string, (long, long, ObjectId)> _headCache = new(StringComparer.Ordinal);
    private const int MaxCachedHeads = 10_000;
    private readonly string _gitDir;

    private GitStore(Repository repo, string path)
    {
        _repo = repo;
        Path = path;
        _gitDir = repo.Info.Path;
        Changes = new ChangeSignal();
    }

    public string Path { get; }

    /// <summary>Ref lock files a dead writer left, removed when this store was opened (<see cref="StaleRefLocks"/>).</summary>
    public IReadOnlyList<string> RemovedStaleLocks { get; private set; } = [];

    /// <summary>Held while open when this is the store's first opener (<see cref="StaleRefLocks"/>).</summary>
    private FileStream? _owner;

    /// <summary>Fires whenever any branch head changes (ours, or another git writer's, seen by polling).</summary>
    public ChangeSignal Changes { get; }

    public Identity Author { get; init; } = new("datakit", "datakit@mobyproject.org");

    /// <summary>
    /// Durable writes: every object and ref is on stable storage, in that order, before the call that wrote it returns
    /// (<see cref="DurableWrites"/>), so an acknowledged commit survives a power cut. Off, a commit is as durable as the
    /// file system's own writeback makes it (seconds), though still never a ref to a missing object after a crash of
    /// this process alone.
    /// </summary>
    public bool SyncWrites { get; init; }

    /// <summary>
    /// The libgit2 that LibGit2Sharp loaded, for a host that loaded it where LibGit2Sharp's own resolver cannot find it
    /// again (kit's copy loaded from memory, src/Kit/NativeGit.cs); zero to ask LibGit2Sharp. Used to set the libgit2
    /// options LibGit2Sharp does not expose (<see cref="DurableWrites"/>).
    /// </summary>
    public static IntPtr LibGit2Handle { get; set; }

    private long _treesWritten;

    /// <summary>Trees written so far: lets tests check that a commit rewrites only the changed path.</summary>
    public long TreesWritten => Interlocked.Read(ref _treesWritten);

    /// <summary>
    /// Opens the repository at <paramref name="path"/>, bare or not, creating a bare one if nothing is there or the
    /// directory is empty.
    /// </summary>
    /// <remarks>
    /// A new store is bare: DataKit writes objects and refs only, never an index or a checkout, so a non-bare store
    /// (what older versions made) has an empty index under a HEAD with files, and <c>git status</c> there shows every
    /// file deleted and a plain <c>git commit</c> commits the deletion. Those stores keep working: libgit2 opens both.
    /// Only a missing path or an empty directory becomes a store; anything else that is not a repository is refused
    /// rather than having <c>git init</c> run inside it.
    /// </remarks>
    /// <exception cref="IOException">The path is a file, or a non-empty directory that is not a git repository.</exception>
    /// <param name="syncWrites">Sets <see cref="SyncWrites"/>.</param>
    public static GitStore Open(string path, bool syncWrites = false)
    {
        string full = System.IO.Path.GetFullPath(path);
        if (syncWrites)
        {
            // Before the repository is created or opened: libgit2's ref backend reads the option once, when it is
            // created, and git init's HEAD is a ref.
            DurableWrites.EnableLibGit2Fsync();
        }
        if (!Repository.IsValid(full))
        {
            if (File.Exists(full))
            {
                throw new IOException($"{full} is a file, not a git repository");
            }
            if (Directory.Exists(full) && Directory.EnumerateFileSystemEntries(full).Any())
            {
                throw new IOException($"{full} is a directory that is neither empty nor a git repository; refusing to create a store in it");
            }
            Directory.CreateDirectory(full);
            Repository.Init(full, isBare: true);
        }
        // libgit2 keeps up to 256 MiB of parsed trees and commits per process by default, a second copy of what the
        // caches here hold decoded.
        GlobalSettings.SetEnableCaching(false);
        var store = new GitStore(new Repository(full), full) { SyncWrites = syncWrites };
        store._owner = StaleRefLocks.TryOwn(store._gitDir);
        if (store._owner is not null)
        {
            store.RemovedStaleLocks = StaleRefLocks.Remove(store._gitDir);
        }
        if (syncWrites)
        {
            DurableWrites.PrepareStore(store._gitDir);
        }
        return store;
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _repo.Dispose();
            _owner?.Dispose();
        }
    }

    // ---------- refs ----------

    /// <summary>git's rules for a branch name (<see cref="BranchName"/>).</summary>
    public static bool IsValidBranchName(string name) => BranchName.IsValid(name);

    /// <summary>Refuses a branch name git would refuse: EINVAL with the reason, before libgit2 sees it.</summary>
    internal static void CheckBranchName(string name)
    {
        if (BranchName.Problem(name) is string problem)
        {
            throw new VfsException(Errno.EINVAL, BranchName.Message(name, problem));
        }
    }

    public IReadOnlyList<string> ListBranches()
    {
        lock (_gate)
        {
            var names = new List<string>();
            foreach (Reference r in _repo.Refs.FromGlob("refs/heads/*"))
            {
                names.Add(r.CanonicalName["refs/heads/".Length..]);
            }
            names.Sort(StringComparer.Ordinal);
            return names;
        }
    }

    /// <summary>All branch heads at once (for the change poller).</summary>
    public Dictionary<string, ObjectId> SnapshotHeads()
    {
        lock (_gate)
        {
            var heads = new Dictionary<string, ObjectId>(StringComparer.Ordinal);
            foreach (Reference r in _repo.Refs.FromGlob("refs/heads/*"))
            {
                if (r.ResolveToDirectReference()?.TargetIdentifier is string sha)
                {
                    heads[r.CanonicalName["refs/heads/".Length..]] = new ObjectId(sha);
                }
            }
            return heads;
        }
    }

    public ObjectId? GetHead(string branch)
    {
        if (!IsValidBranchName(branch))
        {
            return null;
        }
        // The branch's loose ref file is stat'ed first: while its modification time and size are what they were when
        // we last read it, the head is the one we read then. Every ref update (ours through libgit2, or an outside
        // git's) writes a new file and renames it into place, so this stays live for outside writers while skipping
        // libgit2's open/read/parse of the ref (and its packed-refs check) on every lookup under branch/B/ro.
        // A branch with no loose file (only in packed-refs) is read through libgit2 each time.
        var file = new FileInfo(System.IO.Path.Combine(_gitDir, "refs", "heads", branch));
        (long, long)? stamp = file.Exists ? (file.LastWriteTimeUtc.Ticks, file.Length) : null;
        lock (_gate)
        {
            if (stamp is not null && _headCache.TryGetValue(branch, out (long, long, ObjectId) hit) && (hit.Item1, hit.Item2) == stamp)
            {
                return hit.Item3;
            }
            Reference? r = _repo.Refs[$"refs/heads/{branch}"];
            string? sha = r?.ResolveToDirectReference()?.TargetIdentifier;
            ObjectId? id = sha is null ? null : new ObjectId(sha);
            if (stamp is (long t, long n) && id is not null && r is DirectReference && _headCache.Count < MaxCachedHeads)
            {
                _headCache[branch] = (t, n, id);
            }
            else
            {
                _headCache.Remove(branch);
            }
            return id;
        }
    }

    /// <summary>The loose ref file of <paramref name="branch"/> (refs/heads itself for "").</summary>
    private string RefFile(string branch) => System.IO.Path.Combine(_gitDir, "refs", "heads", branch).TrimEnd('/');

    public bool BranchExists(string branch) => GetHead(branch) is not null;

    /// <summary>Moves a branch if its head is still <paramref name="expected"/>; false if it moved meanwhile.</summary>
    public bool TrySetHead(string branch, ObjectId commit, ObjectId? expected, string logMessage)
    {
        CheckBranchName(branch);
        lock (_gate)
        {
            string name = $"refs/heads/{branch}";
            Reference? r = _repo.Refs[name];
            string? current = r?.ResolveToDirectReference()?.TargetIdentifier;
            if (current != expected?.Sha)
            {
                return false;
            }
            // With SyncWrites, libgit2 has synced every object this commit wrote as it wrote it, and now syncs the
            // ref file and refs/heads (DurableWrites); only new subdirectories of a nested name are left to us.
            _repo.Refs.Add(name, commit, logMessage, allowOverwrite: true);
            _headCache.Remove(branch);
            if (SyncWrites && branch.Contains('/', StringComparison.Ordinal))
            {
                DurableWrites.SyncRefDirectories(RefFile(branch), RefFile(""));
            }
        }
        Changes.Poke();
        return true;
    }

    public void DeleteBranch(string branch)
    {
        CheckBranchName(branch);
        lock (_gate)
        {
            if (_repo.Refs[$"refs/heads/{branch}"] is Reference r)
            {
                _repo.Refs.Remove(r);
                // libgit2 unlinks the loose ref without syncing its directory: a deletion that returned must stay done.
                if (SyncWrites)
                {
                    DurableWrites.SyncRefDirectories(RefFile(branch), RefFile(""));
                }
            }
            _headCache.Remove(branch);
        }
        Changes.Poke();
    }

    /// <summary>Renames a branch under the store lock (the original copied then deleted, racily).</summary>
    public void RenameBranch(string from, string to)
    {
        CheckBranchName(from);
        CheckBranchName(to);
        lock (_gate)
        {
            if (_repo.Refs[$"refs/heads/{from}"] is Reference r)
            {
                _repo.Refs.Rename(r, $"refs/heads/{to}");
                // The new name is synced by libgit2; the old one's removal is not.
                if (SyncWrites)
                {
                    DurableWrites.SyncRefDirectories(RefFile(from), RefFile(""));
                    DurableWrites.SyncRefDirectories(RefFile(to), RefFile(""));
                }
            }
            _headCache.Remove(from);
            _headCache.Remove(to);
        }
        Changes.Poke();
    }

    // ---------- objects ----------

    public static bool TryParseHash(string text, out ObjectId? id, out string error)
    {
        id = null;
        if (text.Length != 40)
        {
            error = $"invalid-hash \"{text}\": expected 40 hex characters, got {text.Length}";
            return false;
        }
        foreach (char c in text)
        {
            if (!char.IsAsciiHexDigit(c))
            {
                error = $"invalid-hash \"{text}\": '{c}' is not a hex digit";
                return false;
            }
        }
        id = new ObjectId(text.ToLowerInvariant());
        error = "";
        return true;
    }

    private static long TreeWeight(GitTreeListing tree) => tree.Count + 1;

    /// <summary>Decoded trees and commits held by the long-lived (read) tier and by the recently-written tier; blobs cached.</summary>
    internal (long TreeEntries, int Commits, long WrittenTreeEntries, int WrittenCommits, int Blobs) CacheSizes
    {
        get
        {
            lock (_gate)
            {
                return (_treeCache.Weight, _commitCache.Count, _writtenTrees.Weight, _writtenCommits.Count, _blobCache.Count);
            }
        }
    }

    public CommitInfo? GetCommit(ObjectId id)
    {
        lock (_gate)
        {
            if (_writtenCommits.TryGet(id, out CommitInfo? cached) || _commitCache.TryGet(id, out cached))
            {
                return cached;
            }
            if (_repo.Lookup(id, ObjectType.Commit) is not Commit c)
            {
                return null;
            }
            CommitInfo info = Decode(c);
            _commitCache.Add(id, info);
            return info;
        }
    }

    private static CommitInfo Decode(Commit c) => new(c.Id, c.Tree.Id, c.Parents.Select(p => p.Id).ToArray(), c.Message, c.Committer.When);

    public bool TreeExists(ObjectId id)
    {
        lock (_gate)
        {
            return _repo.Lookup(id, ObjectType.Tree) is not null;
        }
    }

    public bool BlobExists(ObjectId id)
    {
        lock (_gate)
        {
            return _repo.Lookup(id, ObjectType.Blob) is not null;
        }
    }

    public GitTreeListing ReadTree(ObjectId treeId)
    {
        lock (_gate)
        {
            if (_writtenTrees.TryGet(treeId, out GitTreeListing? cached) || _treeCache.TryGet(treeId, out cached))
            {
                return cached;
            }
            if (_repo.Lookup(treeId, ObjectType.Tree) is not Tree tree)
            {
                return GitTreeListing.Empty;
            }
            var entries = new List<GitEntry>(tree.Count);
            foreach (TreeEntry e in tree)
            {
                EntryKind? kind = e.Mode switch
                {
                    Mode.Directory => EntryKind.Dir,
                    Mode.ExecutableFile => EntryKind.Exec,
                    Mode.SymbolicLink => EntryKind.Link,
                    Mode.NonExecutableFile or Mode.NonExecutableGroupWritableFile => EntryKind.File,
                    _ => null, // submodules are not DataKit values
                };
                if (kind is EntryKind k)
                {
                    entries.Add(new GitEntry(e.Name, k, e.Target.Id));
                }
            }
            var listing = new GitTreeListing([.. entries]);
            _treeCache.Add(treeId, listing);
            return listing;
        }
    }

    /// <summary>Follows <paramref name="path"/> from a tree; null when absent.</summary>
    public GitEntry? Resolve(ObjectId rootTree, IReadOnlyList<string> path)
    {
        var current = new GitEntry("", EntryKind.Dir, rootTree);
        foreach (string step in path)
        {
            if (current.Kind != EntryKind.Dir)
            {
                return null;
            }
            GitEntry? next = ReadTree(current.Id).Find(step);
            if (next is null)
            {
                return null;
            }
            current = next.Value;
        }
        return current;
    }

    /// <summary>
    /// Blobs up to this size are read whole (and cached); larger ones only through <see cref="OpenBlob"/>, which
    /// streams them: a 9P read of a big file never makes the server hold the file.
    /// </summary>
    public const long SmallBlob = 1024 * 1024;

    /// <summary>
    /// A small blob's bytes (at most <see cref="SmallBlob"/>: EFBIG beyond). Recently read blobs are cached (bounded)
    /// so a file read in chunks stays cheap; with <paramref name="cache"/> false a blob not already cached is read
    /// without being kept.
    /// </summary>
    public byte[] ReadBlob(ObjectId id, bool cache = true)
    {
        lock (_gate)
        {
            if (_blobCache.TryGet(id, out byte[]? cached))
            {
                return cached;
            }
            if (HeaderSize(id) > SmallBlob)
            {
                throw new VfsException(Errno.EFBIG, "File too large to read whole");
            }
            if (_repo.Lookup(id, ObjectType.Blob) is not Blob blob)
            {
                throw VfsErrors.NotFound();
            }
            using Stream s = blob.GetContentStream();
            byte[] data = new byte[blob.Size];
            s.ReadExactly(data);
            if (cache)
            {
                _blobCache.Add(id, data);
            }
            return data;
        }
    }

    /// <summary>A blob's size from its header alone (libgit2's odb read_header): no blob is loaded to learn it.</summary>
    public long BlobSize(ObjectId id)
    {
        lock (_gate)
        {
            if (_blobCache.TryGet(id, out byte[]? cached))
            {
                return cached.Length;
            }
            return HeaderSize(id);
        }
    }

    private long HeaderSize(ObjectId id)
    {
        try
        {
            GitObjectMetadata? meta = _repo.ObjectDatabase.RetrieveObjectMetadata(id);
            return meta is { Type: ObjectType.Blob } ? meta.Size : 0;
        }
        catch (NotFoundException)
        {
            return 0;
        }
    }

    /// <summary>
    /// A cursor over a blob of any size that inflates it as it is read: from the loose object file, or the pack entry,
    /// when the blob is stored whole; else through <c>git cat-file</c> (deltas; see <see cref="BlobSources.OpenWithGit"/>).
    /// </summary>
    /// <exception cref="VfsException">ENOENT: no such blob.</exception>
    public BlobCursor OpenBlob(ObjectId id)
    {
        string gitDir = _gitDir;
        Stream? first = BlobSources.OpenLoose(gitDir, id, out long size) ?? PackedBlob.Open(gitDir, id, out size);
        if (first is null)
        {
            lock (_gate)
            {
                GitObjectMetadata? meta = _repo.ObjectDatabase.Contains(id) ? _repo.ObjectDatabase.RetrieveObjectMetadata(id) : null;
                if (meta is not { Type: ObjectType.Blob })
                {
                    throw VfsErrors.NotFound();
                }
                size = meta.Size;
            }
        }
        return new BlobCursor(size, () => BlobSources.Open(gitDir, id), first);
    }

    public ObjectId WriteBlob(ReadOnlyMemory<byte> data)
    {
        using var s = new ReadOnlyMemoryStream(data);
        return WriteBlob(s, data.Length);
    }

    /// <summary>
    /// Writes <paramref name="length"/> bytes read from <paramref name="content"/> as a loose blob, streaming
    /// (<see cref="LooseObjectWriter"/>), fsync'd when <see cref="SyncWrites"/> is set. Needs no lock: the object
    /// appears by an atomic rename and libgit2 finds loose objects on disk at each lookup.
    /// </summary>
    public ObjectId WriteBlob(Stream content, long length) => LooseObjectWriter.WriteBlob(_gitDir, content, length, SyncWrites);

    /// <summary>
    /// Writes a tree object. The bytes are laid out here (Git's tree format: "mode name\0" + 20-byte id, sorted with
    /// directories compared as "name/") rather than through TreeDefinition, which looks up every subtree: a commit
    /// then costs the width of the directories it rewrites, never a lookup per sibling.
    /// </summary>
    public ObjectId WriteTree(IEnumerable<GitEntry> entries)
    {
        var list = entries.ToList();
        if (list.Count == 0)
        {
            return EmptyTree;
        }
        // Sort keys are computed once per entry (UTF-8 name, "/" appended for directories), not once per comparison.
        var keys = new byte[list.Count][];
        var order = new GitEntry[list.Count];
        int size = 0;
        for (int i = 0; i < list.Count; i++)
        {
            GitEntry e = list[i];
            byte[] key = new byte[Encoding.UTF8.GetByteCount(e.Name) + (e.Kind == EntryKind.Dir ? 1 : 0)];
            int n = Encoding.UTF8.GetBytes(e.Name, key);
            if (e.Kind == EntryKind.Dir)
            {
                key[n] = (byte)'/';
            }
            keys[i] = key;
            order[i] = e;
            size += 6 + 1 + n + 1 + 20;
        }
        Array.Sort(keys, order, TreeKeyComparer.Instance);
        using var buffer = new MemoryStream(size);
        foreach (GitEntry e in order)
        {
            buffer.Write(e.Kind switch { EntryKind.Dir => "40000 "u8, EntryKind.Exec => "100755 "u8, EntryKind.Link => "120000 "u8, _ => "100644 "u8 });
            buffer.Write(Encoding.UTF8.GetBytes(e.Name));
            buffer.WriteByte(0);
            buffer.Write(e.Id.RawId);
        }
        list = [.. order];
        lock (_gate)
        {
            Interlocked.Increment(ref _treesWritten);
            ObjectId id = _repo.ObjectDatabase.Write<Tree>(buffer.ToArray());
            _writtenTrees.Add(id, new GitTreeListing([.. list]));
            return id;
        }
    }

    /// <summary>Git's tree order: bytewise on the UTF-8 name, directories compared as if followed by "/".</summary>
    private sealed class TreeKeyComparer : IComparer<byte[]>
    {
        public static readonly TreeKeyComparer Instance = new();

        public int Compare(byte[]? x, byte[]? y) => x.AsSpan().SequenceCompareTo(y);
    }

    /// <param name="author">Who wrote the change and when; default: <paramref name="committer"/>.</param>
    /// <param name="committer">Who made the commit and when; default: <see cref="Author"/>, now.</param>
    public ObjectId WriteCommit(ObjectId tree, IReadOnlyList<ObjectId> parents, string message, Signature? author = null, Signature? committer = null)
    {
        lock (_gate)
        {
            Signature sig = committer ?? new Signature(Author, DateTimeOffset.Now);
            Tree t = tree == EmptyTree ? _repo.ObjectDatabase.CreateTree(new TreeDefinition()) : _repo.Lookup<Tree>(tree);
            Commit[] ps = parents.Select(p => _repo.Lookup<Commit>(p)).ToArray();
            Commit c = _repo.ObjectDatabase.CreateCommit(author ?? sig, sig, message, t, ps, prettifyMessage: false);
            // Decoded from the stored object, as GetCommit would: the next transaction on the branch starts from it.
            _writtenCommits.Add(c.Id, Decode(c));
            return c.Id;
        }
    }

    public ObjectId? MergeBase(ObjectId a, ObjectId b)
    {
        lock (_gate)
        {
            Commit? ca = _repo.Lookup<Commit>(a);
            Commit? cb = _repo.Lookup<Commit>(b);
            if (ca is null || cb is null)
            {
                return null;
            }
            return _repo.ObjectDatabase.FindMergeBase(ca, cb)?.Id;
        }
    }

    /// <summary>True if <paramref name="ancestor"/> is <paramref name="descendant"/> or one of its ancestors.</summary>
    public bool IsAncestor(ObjectId ancestor, ObjectId descendant) => ancestor == descendant || MergeBase(ancestor, descendant) == ancestor;

    /// <summary>
    /// The repository's git directory (the store itself when bare, its .git otherwise): where the git CLI runs for
    /// remotes (<see cref="RemoteOps"/>), outside the store lock.
    /// </summary>
    public string GitDir => _gitDir;

    private sealed class ReadOnlyMemoryStream(ReadOnlyMemory<byte> data) : Stream
    {
        private int _position;

        public override bool CanRead => true;
        public override bool CanSeek => true;
        public override bool CanWrite => false;
        public override long Length => data.Length;
        public override long Position { get => _position; set => _position = (int)value; }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n = Math.Min(buffer.Length, data.Length - _position);
            data.Span.Slice(_position, n).CopyTo(buffer);
            _position += n;
            return n;
        }

        public override long Seek(long offset, SeekOrigin origin)
        {
            _position = (int)(origin switch { SeekOrigin.Begin => offset, SeekOrigin.Current => _position + offset, _ => data.Length + offset });
            return _position;
        }

        public override void Flush()
        {
        }

        public override void SetLength(long value) => throw new NotSupportedException();

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

/// <summary>
/// A broadcast "something changed" signal: waiters get a task that completes on the next change. Nothing is
/// registered per waiter, so an abandoned stream reader leaks nothing (the original leaked a watcher per open).
/// </summary>
public sealed class ChangeSignal
{
    private readonly Lock _gate = new();
    private TaskCompletionSource _next = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public Task NextAsync()
    {
        lock (_gate)
        {
            return _next.Task;
        }
    }

    public void Poke()
    {
        TaskCompletionSource fired;
        lock (_gate)
        {
            fired = _next;
            _next = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        fired.TrySetResult();
    }
}
