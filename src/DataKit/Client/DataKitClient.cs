using System.Runtime.CompilerServices;
using System.Text;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.DataKit.Client;

/// <summary>What went wrong, as the original OCaml client distinguished it (reference/datakit.md §5.1, §5.6).</summary>
public enum DataKitErrorKind
{
    AlreadyExists,
    NotFound,
    IsDirectory,
    NotDirectory,
    NotFile,
    NotSymlink,
    Conflict,
    ConflictsPending,
    TransactionClosed,
    Protocol,
    /// <summary>An argument the server would refuse, such as a branch name git does not allow (EINVAL).</summary>
    InvalidArgument,
}

public sealed class DataKitException(DataKitErrorKind kind, string message, Exception? inner = null) : Exception(message, inner)
{
    public DataKitErrorKind Kind { get; } = kind;

    internal static DataKitException From(NinePException e)
    {
        DataKitErrorKind kind = e.Message switch
        {
            "No such file or directory" => DataKitErrorKind.NotFound,
            "Already exists" => DataKitErrorKind.AlreadyExists,
            "Is a directory" => DataKitErrorKind.IsDirectory,
            "Can't walk from a file" or "Is not a directory" => DataKitErrorKind.NotDirectory,
            "conflicts file is not empty" => DataKitErrorKind.ConflictsPending,
            _ when e.Message.StartsWith("Merge conflict", StringComparison.Ordinal) => DataKitErrorKind.Conflict,
            _ when e.Message.StartsWith("Invalid branch name", StringComparison.Ordinal) => DataKitErrorKind.InvalidArgument,
            _ => DataKitErrorKind.Protocol,
        };
        return new DataKitException(kind, e.Message, e);
    }
}

public enum ValueKind
{
    File,
    Exec,
    Link,
    Dir,
}

/// <summary>A path's kind and size.</summary>
public sealed record DkStat(ValueKind Kind, long Size);

/// <summary>One directory entry: name, kind and size, from the directory read itself (no stat per entry).</summary>
public sealed record DkEntry(string Name, ValueKind Kind, long Size);

public enum DiffKind
{
    Added,
    Removed,
    Updated,
}

public sealed record DiffEntry(DiffKind Kind, string Path);

/// <summary>A tree.live value: kind and Git object id, or null when the path is absent.</summary>
public sealed record TreeNodeRef(ValueKind Kind, string Id);

/// <summary>
/// A DataKit client over 9P (9P2000.u, the dialect that carries the server's error texts). Thread-safe: requests
/// are pipelined on one connection.
/// </summary>
public sealed class DataKitClient : IAsyncDisposable
{
    private DataKitClient(NinePClient nineP) => NineP = nineP;

    public NinePClient NineP { get; }

    public static async Task<DataKitClient> ConnectAsync(ListenAddress address, CancellationToken ct = default) =>
        new(await NinePClient.ConnectAsync(address, Dialect.Unix, 1024 * 1024, "", ct).ConfigureAwait(false));

    public ValueTask DisposeAsync() => NineP.DisposeAsync();

    internal static async Task<T> Wrap<T>(Func<Task<T>> action)
    {
        try
        {
            return await action().ConfigureAwait(false);
        }
        catch (NinePException e)
        {
            throw DataKitException.From(e);
        }
    }

    internal static async Task Wrap(Func<Task> action)
    {
        try
        {
            await action().ConfigureAwait(false);
        }
        catch (NinePException e)
        {
            throw DataKitException.From(e);
        }
    }

    /// <summary>A branch if it exists in the store (or this connection made it), else null; creates nothing.</summary>
    public async Task<Branch?> ExistingBranchAsync(string name, CancellationToken ct = default)
    {
        CheckBranchName(name);
        try
        {
            await NineP.StatPathAsync($"branch/{name}", ct).ConfigureAwait(false);
            return new Branch(this, name);
        }
        catch (NinePException e) when (e.Errno == Errno.ENOENT)
        {
            return null;
        }
        catch (NinePException e)
        {
            throw DataKitException.From(e);
        }
    }

    internal static ValueKind KindOf(Stat s) =>
        (s.Mode & P9.DmDir) != 0 ? ValueKind.Dir
        : (s.Mode & P9.DmSymlink) != 0 ? ValueKind.Link
        : (s.Mode & 0x40) != 0 ? ValueKind.Exec
        : ValueKind.File;

    /// <summary>A directory's entries from its 9P2000.u stat records (one read per msize, not one Tstat per entry).</summary>
    internal async Task<IReadOnlyList<DkEntry>> ListEntriesAsync(string path, CancellationToken ct)
    {
        uint fid = await NineP.WalkAsync(path, ct).ConfigureAwait(false);
        try
        {
            await NineP.OpenAsync(fid, P9.OREAD, ct).ConfigureAwait(false);
            var stats = new List<Stat>();
            ulong offset = 0;
            while (true)
            {
                byte[] data = await NineP.ReadAsync(fid, offset, NineP.MaxPayload, ct).ConfigureAwait(false);
                if (data.Length == 0)
                {
                    break;
                }
                if (!DirEntryCodec.TryParseStats(data, NineP.Dialect, stats))
                {
                    throw new DataKitException(DataKitErrorKind.Protocol, $"malformed directory read of {path}");
                }
                offset += (ulong)data.Length;
            }
            var entries = new DkEntry[stats.Count];
            for (int i = 0; i < stats.Count; i++)
            {
                entries[i] = new DkEntry(stats[i].Name, KindOf(stats[i]), (long)stats[i].Length);
            }
            return entries;
        }
        finally
        {
            await NineP.ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    /// <summary>Copies a file to <paramref name="destination"/> one msize at a time, never holding it whole.</summary>
    internal async Task CopyFileToAsync(string path, Stream destination, CancellationToken ct)
    {
        uint fid = await NineP.WalkAsync(path, ct).ConfigureAwait(false);
        try
        {
            // A directory's read returns stat records, not content: refuse it as cat(1) does.
            if (KindOf(await NineP.StatAsync(fid, ct).ConfigureAwait(false)) == ValueKind.Dir)
            {
                throw new DataKitException(DataKitErrorKind.IsDirectory, "Is a directory");
            }
            await NineP.OpenAsync(fid, P9.OREAD, ct).ConfigureAwait(false);
            ulong offset = 0;
            Task<byte[]> next = NineP.ReadAsync(fid, offset, NineP.MaxPayload, ct);
            try
            {
                while (true)
                {
                    byte[] chunk = await next.ConfigureAwait(false);
                    if (chunk.Length == 0)
                    {
                        break;
                    }
                    offset += (ulong)chunk.Length;
                    // The next Tread goes out before this chunk is written. Writing a 1 MiB chunk into a pipe (64 KiB)
                    // waits for the reader behind it; one Tread at a time, the server and that reader would take
                    // turns, and the server's reply would find the reader idle (docs/benchmarks.md, the 64 MiB read).
                    // At most two chunks are held.
                    next = NineP.ReadAsync(fid, offset, NineP.MaxPayload, ct);
                    await destination.WriteAsync(chunk, ct).ConfigureAwait(false);
                }
            }
            finally
            {
                // The fid is clunked only once no Tread on it is in flight.
                await ((Task)next).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            }
        }
        finally
        {
            await NineP.ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    public Task<IReadOnlyList<string>> ListBranchesAsync(CancellationToken ct = default) => Wrap(() => NineP.ListAsync("branch", ct));

    /// <summary>Opens a branch, creating it if needed (mkdir always succeeds).</summary>
    public async Task<Branch> BranchAsync(string name, CancellationToken ct = default)
    {
        CheckBranchName(name);
        await Wrap(() => NineP.MkdirAsync("branch", name, ct)).ConfigureAwait(false);
        return new Branch(this, name);
    }

    public Task RemoveBranchAsync(string name)
    {
        CheckBranchName(name);
        return Wrap(() => NineP.RemovePathAsync($"branch/{name}"));
    }

    /// <summary>
    /// Refuses a name git would refuse (<see cref="Store.BranchName"/>) before anything is sent: a name with '/' would
    /// otherwise walk into another branch's directory, and the server would refuse the rest anyway.
    /// </summary>
    private static void CheckBranchName(string name)
    {
        if (Store.BranchName.Problem(name) is string problem)
        {
            throw new DataKitException(DataKitErrorKind.InvalidArgument, Store.BranchName.Message(name, problem));
        }
    }

    /// <summary>A commit by hash; fails with NotFound if the store does not have it.</summary>
    public async Task<Commit> CommitAsync(string id, CancellationToken ct = default)
    {
        await Wrap(() => NineP.ReadAllAsync($"commits/{id}", ct)).ConfigureAwait(false);
        return new Commit(this, id);
    }

    /// <summary>A tree by its tree.live id (e.g. "D-4b825dc6...").</summary>
    public Tree Tree(string id) => new(this, $"trees/{id}");

    /// <summary>Fetches <paramref name="branch"/> from <paramref name="url"/>; returns its head. No local branch moves.</summary>
    public async Task<Commit> FetchAsync(string url, string branch, CancellationToken ct = default)
    {
        CheckBranchName(branch);
        string name = "fetch-" + Guid.NewGuid().ToString("N")[..12];
        await Wrap(() => NineP.MkdirAsync("remotes", name, ct)).ConfigureAwait(false);
        try
        {
            string dir = $"remotes/{name}";
            await Wrap(() => NineP.WriteTextAsync($"{dir}/url", url, ct)).ConfigureAwait(false);
            await Wrap(() => NineP.WriteTextAsync($"{dir}/fetch", branch, ct)).ConfigureAwait(false);
            await foreach (string line in StreamLinesAsync($"{dir}/head", ct).ConfigureAwait(false))
            {
                if (line.Length > 0)
                {
                    return new Commit(this, line);
                }
            }
            throw new DataKitException(DataKitErrorKind.Protocol, "remote head stream ended");
        }
        finally
        {
            try
            {
                await NineP.RemovePathAsync($"remotes/{name}").ConfigureAwait(false);
            }
            catch (NinePException)
            {
            }
        }
    }

    /// <summary>Reads a stream file line by line (head.live, tree.live), until cancelled.</summary>
    internal async IAsyncEnumerable<string> StreamLinesAsync(string path, [EnumeratorCancellation] CancellationToken ct)
    {
        uint fid = await Wrap(() => NineP.WalkAsync(path, ct)).ConfigureAwait(false);
        try
        {
            await Wrap(() => NineP.OpenAsync(fid, P9.OREAD, ct)).ConfigureAwait(false);
            ulong offset = 0;
            var pending = new StringBuilder();
            while (true)
            {
                byte[] chunk = await Wrap(() => NineP.ReadAsync(fid, offset, 4096, ct)).ConfigureAwait(false);
                offset += (ulong)chunk.Length;
                pending.Append(Encoding.UTF8.GetString(chunk));
                string text = pending.ToString();
                int nl;
                while ((nl = text.IndexOf('\n', StringComparison.Ordinal)) >= 0)
                {
                    yield return text[..nl];
                    text = text[(nl + 1)..];
                }
                pending.Clear().Append(text);
            }
        }
        finally
        {
            try
            {
                await NineP.ClunkAsync(fid).ConfigureAwait(false);
            }
            catch (Exception e) when (e is NinePException or IOException)
            {
            }
        }
    }
}

/// <summary>A readable tree: a branch's ro/, a snapshot, a transaction's rw/, a merge's ours/theirs/base.</summary>
public class Tree
{
    internal Tree(DataKitClient client, string root)
    {
        Client = client;
        Root = root;
    }

    internal DataKitClient Client { get; }
    internal string Root { get; }

    internal string Full(string path) => path.Trim('/').Length == 0 ? Root : $"{Root}/{path.Trim('/')}";

    public Task<byte[]> ReadFileAsync(string path, CancellationToken ct = default) => DataKitClient.Wrap(() => Client.NineP.ReadAllAsync(Full(path), ct));

    public async Task<string> ReadTextAsync(string path, CancellationToken ct = default) => Encoding.UTF8.GetString(await ReadFileAsync(path, ct).ConfigureAwait(false));

    public Task<IReadOnlyList<string>> ReadDirAsync(string path, CancellationToken ct = default) => DataKitClient.Wrap(() => Client.NineP.ListAsync(Full(path), ct));

    /// <summary>The path's kind and size, or null if absent.</summary>
    public async Task<DkStat?> StatAsync(string path, CancellationToken ct = default)
    {
        try
        {
            Stat s = await Client.NineP.StatPathAsync(Full(path), ct).ConfigureAwait(false);
            return new DkStat(DataKitClient.KindOf(s), (long)s.Length);
        }
        catch (NinePException e) when (e.Errno == Errno.ENOENT)
        {
            return null;
        }
    }

    public async Task<bool> ExistsAsync(string path, CancellationToken ct = default) => await StatAsync(path, ct).ConfigureAwait(false) is not null;

    /// <summary>A directory's entries with their kinds and sizes.</summary>
    public Task<IReadOnlyList<DkEntry>> ListAsync(string path, CancellationToken ct = default) => DataKitClient.Wrap(() => Client.ListEntriesAsync(Full(path), ct));

    /// <summary>Streams a file's content to <paramref name="destination"/> (IsDirectory for a directory).</summary>
    public Task CopyFileToAsync(string path, Stream destination, CancellationToken ct = default) =>
        DataKitClient.Wrap(() => Client.CopyFileToAsync(Full(path), destination, ct));

    public async Task<bool> ExistsFileAsync(string path, CancellationToken ct = default) =>
        await StatAsync(path, ct).ConfigureAwait(false) is { Kind: ValueKind.File or ValueKind.Exec };

    public async Task<bool> ExistsDirAsync(string path, CancellationToken ct = default) =>
        await StatAsync(path, ct).ConfigureAwait(false) is { Kind: ValueKind.Dir };

    /// <summary>A symlink's target (from the 9P2000.u stat extension, since the original omitted QTSYMLINK).</summary>
    public async Task<string> ReadLinkAsync(string path, CancellationToken ct = default)
    {
        Stat s = await DataKitClient.Wrap(() => Client.NineP.StatPathAsync(Full(path), ct)).ConfigureAwait(false);
        if ((s.Mode & P9.DmSymlink) == 0)
        {
            throw new DataKitException(DataKitErrorKind.NotSymlink, $"{path} is not a symlink");
        }
        return s.Extension;
    }
}

/// <summary>A commit: id, tree, message, parents.</summary>
public sealed class Commit
{
    private readonly DataKitClient _client;

    internal Commit(DataKitClient client, string id)
    {
        _client = client;
        Id = id;
        Tree = new Tree(client, $"snapshots/{id}/ro");
    }

    public string Id { get; }
    public Tree Tree { get; }

    public Task<string> MessageAsync(CancellationToken ct = default) => DataKitClient.Wrap(() => _client.NineP.ReadTextAsync($"snapshots/{Id}/msg", ct));

    public async Task<IReadOnlyList<string>> ParentsAsync(CancellationToken ct = default) =>
        (await DataKitClient.Wrap(() => _client.NineP.ReadTextAsync($"snapshots/{Id}/parents", ct)).ConfigureAwait(false))
            .Split('\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>Changes going from <paramref name="other"/> to this commit.</summary>
    public async Task<IReadOnlyList<DiffEntry>> DiffAsync(Commit other, CancellationToken ct = default) =>
        Diffs.Parse(await DataKitClient.Wrap(() => _client.NineP.ReadTextAsync($"snapshots/{Id}/diff/{other.Id}", ct)).ConfigureAwait(false));

    public override string ToString() => Id;
}

internal static class Diffs
{
    public static IReadOnlyList<DiffEntry> Parse(string text)
    {
        var list = new List<DiffEntry>();
        foreach (string line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.Length < 3)
            {
                continue;
            }
            DiffKind kind = line[0] switch { '+' => DiffKind.Added, '-' => DiffKind.Removed, _ => DiffKind.Updated };
            list.Add(new DiffEntry(kind, line[2..]));
        }
        return list;
    }
}

/// <summary>A branch: its head, watches, fast-forward and transactions.</summary>
public sealed class Branch
{
    private readonly DataKitClient _client;

    internal Branch(DataKitClient client, string name)
    {
        _client = client;
        Name = name;
    }

    public string Name { get; }
    private string Dir => $"branch/{Name}";

    public async Task<Commit?> HeadAsync(CancellationToken ct = default)
    {
        string head = (await DataKitClient.Wrap(() => _client.NineP.ReadTextAsync($"{Dir}/head", ct)).ConfigureAwait(false)).Trim();
        return head.Length == 0 ? null : new Commit(_client, head);
    }

    public Task FastForwardAsync(Commit commit, CancellationToken ct = default) =>
        DataKitClient.Wrap(() => _client.NineP.WriteTextAsync($"{Dir}/fast-forward", commit.Id, ct));

    public Task RemoveAsync() => _client.RemoveBranchAsync(Name);

    /// <summary>The live head: the current value first, then each change (latest value only).</summary>
    public async IAsyncEnumerable<Commit?> WatchHeadAsync([EnumeratorCancellation] CancellationToken ct = default)
    {
        await foreach (string line in _client.StreamLinesAsync($"{Dir}/head.live", ct).ConfigureAwait(false))
        {
            yield return line.Length == 0 ? null : new Commit(_client, line);
        }
    }

    /// <summary>The live value of a path: its kind and object id, or null while absent.</summary>
    public async IAsyncEnumerable<TreeNodeRef?> WatchPathAsync(string path, [EnumeratorCancellation] CancellationToken ct = default)
    {
        string watch = string.Concat(path.Split('/', StringSplitOptions.RemoveEmptyEntries).Select(s => "/" + s + ".node"));
        await foreach (string line in _client.StreamLinesAsync($"{Dir}/watch{watch}/tree.live", ct).ConfigureAwait(false))
        {
            if (line.Length < 3)
            {
                yield return null;
                continue;
            }
            ValueKind kind = line[0] switch { 'D' => ValueKind.Dir, 'X' => ValueKind.Exec, 'L' => ValueKind.Link, _ => ValueKind.File };
            yield return new TreeNodeRef(kind, line);
        }
    }

    /// <summary>Starts a transaction (random name, retried on a clash, as the OCaml client did).</summary>
    public async Task<Transaction> TransactionAsync(CancellationToken ct = default)
    {
        for (int attempt = 0; ; attempt++)
        {
            string name = Random.Shared.NextInt64(long.MaxValue).ToString(System.Globalization.CultureInfo.InvariantCulture);
            try
            {
                await _client.NineP.MkdirAsync($"{Dir}/transactions", name, ct).ConfigureAwait(false);
                return new Transaction(_client, $"{Dir}/transactions/{name}");
            }
            catch (NinePException e) when (e.Message == "Already exists" && attempt < 3)
            {
            }
            catch (NinePException e)
            {
                throw DataKitException.From(e);
            }
        }
    }

    /// <summary>Runs <paramref name="body"/> in a transaction; aborts it unless the body committed.</summary>
    public async Task<T> WithTransactionAsync<T>(Func<Transaction, Task<T>> body, CancellationToken ct = default)
    {
        await using Transaction t = await TransactionAsync(ct).ConfigureAwait(false);
        return await body(t).ConfigureAwait(false);
    }
}

/// <summary>The result of a merge: the three trees and the paths left in conflict.</summary>
public sealed record MergeResult(Tree Ours, Tree Theirs, Tree Base, IReadOnlyList<string> Conflicts);

/// <summary>An open transaction: edit rw/, then commit or abort. Disposing aborts if still open.</summary>
public sealed class Transaction : Tree, IAsyncDisposable
{
    private readonly string _dir;

    internal Transaction(DataKitClient client, string dir) : base(client, $"{dir}/rw") => _dir = dir;

    public bool IsClosed { get; private set; }

    private NinePClient P => Client.NineP;

    private void CheckOpen()
    {
        if (IsClosed)
        {
            throw new DataKitException(DataKitErrorKind.TransactionClosed, "transaction is closed");
        }
    }

    private static (string Dir, string Name) Split(string path)
    {
        string p = path.Trim('/');
        int slash = p.LastIndexOf('/');
        return slash < 0 ? ("", p) : (p[..slash], p[(slash + 1)..]);
    }

    public Task CreateDirAsync(string path, CancellationToken ct = default)
    {
        CheckOpen();
        (string dir, string name) = Split(path);
        return DataKitClient.Wrap(() => P.MkdirAsync(Full(dir), name, ct));
    }

    /// <summary>mkdir -p: every missing step is created; existing ones are fine.</summary>
    public async Task MakeDirsAsync(string path, CancellationToken ct = default)
    {
        CheckOpen();
        string done = "";
        foreach (string step in path.Split('/', StringSplitOptions.RemoveEmptyEntries))
        {
            try
            {
                await P.MkdirAsync(Full(done), step, ct).ConfigureAwait(false);
            }
            catch (NinePException e) when (e.Message == "Already exists")
            {
            }
            catch (NinePException e)
            {
                throw DataKitException.From(e);
            }
            done = done.Length == 0 ? step : $"{done}/{step}";
        }
    }

    public Task CreateFileAsync(string path, ReadOnlyMemory<byte> content, bool executable = false, CancellationToken ct = default)
    {
        CheckOpen();
        (string dir, string name) = Split(path);
        return DataKitClient.Wrap(() => P.CreateFileAsync(Full(dir), name, content, executable ? 0x1EDu : 0x1A4u, "", ct));
    }

    public Task CreateSymlinkAsync(string path, string target, CancellationToken ct = default)
    {
        CheckOpen();
        (string dir, string name) = Split(path);
        return DataKitClient.Wrap(() => P.CreateFileAsync(Full(dir), name, default, P9.DmSymlink | 0x1FF, target, ct));
    }

    /// <summary>Replaces the content of an existing file (NotFound if absent).</summary>
    public Task ReplaceFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken ct = default)
    {
        CheckOpen();
        return DataKitClient.Wrap(() => P.WriteFileAsync(Full(path), content, true, ct));
    }

    /// <summary>
    /// Creates or replaces a file with the bytes of <paramref name="source"/>, streamed one msize at a time (the
    /// server's create replaces an existing file, so this is one walk and one create whatever was there).
    /// </summary>
    public async Task WriteFileAsync(string path, Stream source, bool executable = false, CancellationToken ct = default)
    {
        CheckOpen();
        (string dir, string name) = Split(path);
        uint fid = await DataKitClient.Wrap(() => P.WalkAsync(Full(dir), ct)).ConfigureAwait(false);
        try
        {
            await DataKitClient.Wrap(() => P.CreateAsync(fid, name, executable ? 0x1EDu : 0x1A4u, P9.OWRITE, "", ct)).ConfigureAwait(false);
            byte[] buffer = new byte[P.MaxPayload];
            ulong offset = 0;
            int n;
            while ((n = await source.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
            {
                ReadOnlyMemory<byte> chunk = buffer.AsMemory(0, n);
                await DataKitClient.Wrap(() => P.WriteAsync(fid, offset, chunk, ct)).ConfigureAwait(false);
                offset += (ulong)n;
            }
        }
        finally
        {
            await P.ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Sets the commit's author and committer ("Name &lt;email&gt;") and author date (RFC 3339 or "SECONDS +HHMM");
    /// null leaves the server's default. The server checks them at commit time (EINVAL with a reason).
    /// </summary>
    public async Task SetMetadataAsync(string? author = null, string? committer = null, string? date = null, CancellationToken ct = default)
    {
        CheckOpen();
        foreach ((string file, string? value) in new[] { ("author", author), ("committer", committer), ("date", date) })
        {
            if (value is not null)
            {
                await DataKitClient.Wrap(() => P.WriteTextAsync($"{_dir}/{file}", value, ct)).ConfigureAwait(false);
            }
        }
    }

    public async Task CreateOrReplaceFileAsync(string path, ReadOnlyMemory<byte> content, CancellationToken ct = default)
    {
        if (await ExistsAsync(path, ct).ConfigureAwait(false))
        {
            await ReplaceFileAsync(path, content, ct).ConfigureAwait(false);
        }
        else
        {
            await CreateFileAsync(path, content, false, ct).ConfigureAwait(false);
        }
    }

    public Task SetExecutableAsync(string path, bool executable, CancellationToken ct = default)
    {
        CheckOpen();
        return DataKitClient.Wrap(() => P.WstatPathAsync(Full(path), Stat.DontTouch with { Mode = executable ? 0x1EDu : 0x1A4u }, ct));
    }

    public Task TruncateAsync(string path, long length, CancellationToken ct = default)
    {
        CheckOpen();
        return DataKitClient.Wrap(() => P.WstatPathAsync(Full(path), Stat.DontTouch with { Length = (ulong)length }, ct));
    }

    /// <summary>Removes a file or a whole subtree.</summary>
    public Task RemoveAsync(string path, CancellationToken ct = default)
    {
        CheckOpen();
        return DataKitClient.Wrap(() => P.RemovePathAsync(Full(path), ct));
    }

    public async Task<IReadOnlyList<string>> ParentsAsync(CancellationToken ct = default) =>
        (await DataKitClient.Wrap(() => P.ReadTextAsync($"{_dir}/parents", ct)).ConfigureAwait(false)).Split('\n', StringSplitOptions.RemoveEmptyEntries);

    public Task SetParentsAsync(IEnumerable<Commit> parents, CancellationToken ct = default)
    {
        CheckOpen();
        return DataKitClient.Wrap(() => P.WriteTextAsync($"{_dir}/parents", string.Concat(parents.Select(p => p.Id + "\n")), ct));
    }

    public async Task<IReadOnlyList<string>> ConflictsAsync(CancellationToken ct = default) =>
        (await DataKitClient.Wrap(() => P.ReadTextAsync($"{_dir}/conflicts", ct)).ConfigureAwait(false)).Split('\n', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>Merges <paramref name="commit"/> into rw/ (DataKit's merge mode).</summary>
    public async Task<MergeResult> MergeAsync(Commit commit, CancellationToken ct = default)
    {
        CheckOpen();
        await DataKitClient.Wrap(() => P.WriteTextAsync($"{_dir}/merge", commit.Id, ct)).ConfigureAwait(false);
        return new MergeResult(new Tree(Client, $"{_dir}/ours"), new Tree(Client, $"{_dir}/theirs"), new Tree(Client, $"{_dir}/base"),
            await ConflictsAsync(ct).ConfigureAwait(false));
    }

    /// <summary>Changes from <paramref name="commit"/> to this transaction's rw/.</summary>
    public async Task<IReadOnlyList<DiffEntry>> DiffAsync(Commit commit, CancellationToken ct = default) =>
        Diffs.Parse(await DataKitClient.Wrap(() => P.ReadTextAsync($"{_dir}/diff/{commit.Id}", ct)).ConfigureAwait(false));

    /// <summary>Commits; on success the transaction is closed. On a conflict it stays open to be fixed or aborted.</summary>
    public async Task CommitAsync(string message, CancellationToken ct = default)
    {
        CheckOpen();
        await DataKitClient.Wrap(() => P.WriteTextAsync($"{_dir}/msg", message, ct)).ConfigureAwait(false);
        await DataKitClient.Wrap(() => P.WriteTextAsync($"{_dir}/ctl", "commit", ct)).ConfigureAwait(false);
        IsClosed = true;
    }

    public async Task AbortAsync()
    {
        if (IsClosed)
        {
            return;
        }
        IsClosed = true;
        try
        {
            await P.WriteTextAsync($"{_dir}/ctl", "close").ConfigureAwait(false);
        }
        catch (Exception e) when (e is NinePException or IOException)
        {
            // Already gone (connection closed or committed elsewhere): nothing to abort.
        }
    }

    public async ValueTask DisposeAsync() => await AbortAsync().ConfigureAwait(false);
}
