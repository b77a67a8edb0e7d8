using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Kit.DataKit.Client;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Server;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit data ls|cat|write|commit|watch` (issue 16, item 6): DataKit for scripts that mount nothing, over the C# 9P client.
/// Locations are git's revision:path spelling, BRANCH:PATH (git forbids ':' in branch names, so the first ':' splits).
/// Reads (ls, cat) go to one commit, the branch head when the command starts, through snapshots/HEAD/ro, so a listing
/// and the bytes it names never mix two commits. Output is bytes for cat and one line per item otherwise; errors are one
/// line on stderr and exit code 1.
/// </summary>
internal static class DataClientCommands
{
    public const string DefaultUrl = "tcp://127.0.0.1:5640";

    /// <summary>How long connecting and the 9P handshake may take: a server that accepts and never answers is an error.</summary>
    private static readonly TimeSpan ConnectTimeout = TimeSpan.FromSeconds(10);

    public static Command[] Create() => [Ls(), Cat(), Write(), CommitCommand(), Watch()];

    private static Option<string> UrlOption() => new("--url")
    {
        HelpName = "URL",
        Description = "The DataKit server: tcp://HOST:PORT or unix:PATH (the default is where `kit data serve` listens by default).",
        DefaultValueFactory = _ => DefaultUrl,
    };

    private sealed class MetadataOptions
    {
        public Option<string?> Author { get; } = new("--author") { HelpName = "\"NAME <EMAIL>\"", Description = "The commit's author (default: the server's --author)." };
        public Option<string?> Committer { get; } = new("--committer") { HelpName = "\"NAME <EMAIL>\"", Description = "The commit's committer (default: the server's --committer, else its --author)." };
        public Option<string?> Date { get; } = new("--date") { HelpName = "DATE", Description = "The author date: RFC 3339 (2026-12-07T11:45:00Z) or git's \"SECONDS +HHMM\" (default: now)." };

        public void AddTo(Command c)
        {
            c.Options.Add(Author);
            c.Options.Add(Committer);
            c.Options.Add(Date);
        }

        /// <summary>Checked here too, so a typo fails before anything is sent, naming the flag.</summary>
        public (string? Author, string? Committer, string? Date) Get(ParseResult parse)
        {
            string? author = parse.GetValue(Author), committer = parse.GetValue(Committer), date = parse.GetValue(Date);
            var problems = new List<string>();
            foreach ((string flag, string? value) in new[] { ("--author", author), ("--committer", committer) })
            {
                if (value is not null && !CommitMetadata.TryParseIdentity(value, out _, out string error))
                {
                    problems.Add($"{flag}: {error}");
                }
            }
            if (date is not null && !CommitMetadata.TryParseDate(date, out _, out string dateError))
            {
                problems.Add($"--date: {dateError}");
            }
            return problems.Count > 0 ? throw CliException.Many(problems) : (author, committer, date);
        }
    }

    // ---------- ls ----------

    private static Command Ls()
    {
        var url = UrlOption();
        var location = new Argument<string>("BRANCH[:PATH]") { Description = "The branch, and a directory or file in its head (default: the root)." };
        var longFormat = new Option<bool>("--long", "-l") { Description = "git ls-tree -l's columns: mode, type, size (\"-\" for trees), then the name." };
        var c = new Command("ls", "List a directory of a branch's head (directories end in '/').") { location, longFormat, url };
        c.SetAction((parse, ct) => Run(parse.GetValue(url)!, ct, async client =>
        {
            Location at = Location.Parse(parse.GetValue(location)!, pathRequired: false);
            Tree? tree = await HeadTreeAsync(client, at, ct).ConfigureAwait(false);
            if (tree is null)
            {
                return 0; // a branch made but not yet committed to: an empty root
            }
            DkStat stat = await tree.StatAsync(at.Path, ct).ConfigureAwait(false) ?? throw at.NotFound();
            IReadOnlyList<DkEntry> entries = stat.Kind == ValueKind.Dir
                ? await tree.ListAsync(at.Path, ct).ConfigureAwait(false)
                : [new DkEntry(at.Path, stat.Kind, stat.Size)];
            var text = new StringBuilder();
            foreach (DkEntry e in entries.OrderBy(e => e.Name, StringComparer.Ordinal))
            {
                if (parse.GetValue(longFormat))
                {
                    (string mode, string type) = e.Kind switch
                    {
                        ValueKind.Dir => ("040000", "tree"),
                        ValueKind.Exec => ("100755", "blob"),
                        ValueKind.Link => ("120000", "blob"),
                        _ => ("100644", "blob"),
                    };
                    string size = e.Kind == ValueKind.Dir ? "-" : e.Size.ToString(CultureInfo.InvariantCulture);
                    text.Append(CultureInfo.InvariantCulture, $"{mode} {type} {size,8}\t{e.Name}\n");
                }
                else
                {
                    text.Append(e.Name).Append(e.Kind == ValueKind.Dir ? "/" : "").Append('\n');
                }
            }
            await WriteOutAsync(text.ToString(), ct).ConfigureAwait(false);
            return 0;
        }));
        return c;
    }

    // ---------- cat ----------

    private static Command Cat()
    {
        var url = UrlOption();
        var location = new Argument<string>("BRANCH:PATH") { Description = "The file (a symlink gives its target)." };
        var c = new Command("cat", "Write a file of a branch's head to standard output, byte for byte.") { location, url };
        c.SetAction((parse, ct) => Run(parse.GetValue(url)!, ct, async client =>
        {
            Location at = Location.Parse(parse.GetValue(location)!, pathRequired: true);
            Tree tree = await HeadTreeAsync(client, at, ct).ConfigureAwait(false) ?? throw at.NotFound();
            DkStat stat = await tree.StatAsync(at.Path, ct).ConfigureAwait(false) ?? throw at.NotFound();
            if (stat.Kind == ValueKind.Dir)
            {
                throw new CliException($"{at}: is a directory (use kit data ls)");
            }
            await using Stream stdout = Console.OpenStandardOutput();
            await tree.CopyFileToAsync(at.Path, stdout, ct).ConfigureAwait(false);
            await stdout.FlushAsync(ct).ConfigureAwait(false);
            return 0;
        }));
        return c;
    }

    // ---------- write ----------

    private static Command Write()
    {
        var url = UrlOption();
        var location = new Argument<string>("BRANCH:PATH") { Description = "Where to write (the branch and missing directories are created)." };
        var source = new Argument<string>("FILE") { Arity = ArgumentArity.ZeroOrOne, Description = "The content: a file, or - (the default) for standard input.", DefaultValueFactory = _ => "-" };
        var message = new Option<string?>("--message", "-m") { HelpName = "MSG", Description = "The commit message (default: \"kit data write PATH\")." };
        var executable = new Option<bool>("--executable", "-x") { Description = "Record the file as executable (also when FILE has its owner's x bit, as git add does)." };
        var metadata = new MetadataOptions();
        var c = new Command("write", "Commit one file to a branch; prints the branch's new head.") { location, source, message, executable, url };
        metadata.AddTo(c);
        c.SetAction((parse, ct) =>
        {
            Location at = Location.Parse(parse.GetValue(location)!, pathRequired: true);
            var meta = metadata.Get(parse);
            var change = Change.Set(at.Path, parse.GetValue(source)!, parse.GetValue(executable));
            return CommitChangesAsync(parse.GetValue(url)!, at.Branch, [change], parse.GetValue(message) ?? $"kit data write {at.Path}", meta, ct);
        });
        return c;
    }

    // ---------- commit ----------

    private static Command CommitCommand()
    {
        var url = UrlOption();
        var branch = new Argument<string>("BRANCH") { Description = "The branch (created if missing)." };
        var message = new Option<string>("--message", "-m") { HelpName = "MSG", Description = "The commit message.", Required = true };
        var set = new Option<string[]>("--set") { HelpName = "PATH=FILE", Description = "Write FILE's content (- for standard input) at PATH (repeatable).", AllowMultipleArgumentsPerToken = false };
        var delete = new Option<string[]>("--delete") { HelpName = "PATH", Description = "Remove PATH, a file or a whole directory (repeatable; done before the --set writes)." };
        var metadata = new MetadataOptions();
        var c = new Command("commit", "Commit several changes to a branch in one transaction; prints the branch's new head.") { branch, message, set, delete, url };
        metadata.AddTo(c);
        c.SetAction((parse, ct) =>
        {
            string name = parse.GetValue(branch)!;
            Location.CheckBranch(name);
            var meta = metadata.Get(parse);
            var changes = new List<Change>();
            var problems = new List<string>();
            foreach (string d in parse.GetValue(delete) ?? [])
            {
                changes.Add(Change.Delete(Location.NormalizePath(d, "--delete")));
            }
            int stdin = 0;
            foreach (string s in parse.GetValue(set) ?? [])
            {
                int eq = s.IndexOf('=', StringComparison.Ordinal);
                if (eq <= 0 || eq == s.Length - 1)
                {
                    problems.Add($"--set {s}: expected PATH=FILE");
                    continue;
                }
                string file = s[(eq + 1)..];
                if (file == "-" && ++stdin > 1)
                {
                    problems.Add("--set: standard input (-) can be read only once");
                }
                changes.Add(Change.Set(Location.NormalizePath(s[..eq], "--set"), file, executable: false));
            }
            if (problems.Count > 0)
            {
                throw CliException.Many(problems);
            }
            return CommitChangesAsync(parse.GetValue(url)!, name, changes, parse.GetValue(message)!, meta, ct);
        });
        return c;
    }

    /// <summary>One edit of a transaction: remove a path, or write a file (content from a local file or stdin).</summary>
    private sealed record Change(string Path, string? Source, bool Executable)
    {
        public static Change Delete(string path) => new(path, null, false);

        public static Change Set(string path, string source, bool executable) => new(path, source, executable);

        /// <summary>The content, opened before the server is contacted so that a missing file costs no transaction.</summary>
        public (Stream Content, bool Executable) Open()
        {
            if (Source == "-")
            {
                return (Console.OpenStandardInput(), Executable);
            }
            try
            {
                var stream = new FileStream(Source!, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.Asynchronous | FileOptions.SequentialScan);
                // git add records the owner's x bit (git-add(1), core.fileMode); so does this.
                bool exec = Executable || (File.GetUnixFileMode(stream.SafeFileHandle) & UnixFileMode.UserExecute) != 0;
                return (stream, exec);
            }
            catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException)
            {
                throw new CliException($"{Source}: no such file");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new CliException($"{Source}: {e.Message}");
            }
        }
    }

    private static Task<int> CommitChangesAsync(string url, string branchName, IReadOnlyList<Change> changes, string message,
        (string? Author, string? Committer, string? Date) meta, CancellationToken ct)
    {
        Location.CheckBranch(branchName);
        // Index by position: two identical --set flags are two changes, not one key.
        var opened = new (Stream Content, bool Executable)?[changes.Count];
        try
        {
            for (int i = 0; i < changes.Count; i++)
            {
                opened[i] = changes[i].Source is null ? null : changes[i].Open();
            }
        }
        catch
        {
            Close(opened);
            throw;
        }
        return Run(url, ct, async client =>
        {
            try
            {
                Branch branch = await client.BranchAsync(branchName, ct).ConfigureAwait(false);
                await using DataKit.Client.Transaction tx = await branch.TransactionAsync(ct).ConfigureAwait(false);
                for (int i = 0; i < changes.Count; i++)
                {
                    Change change = changes[i];
                    var at = new Location(branchName, change.Path);
                    try
                    {
                        if (change.Source is null)
                        {
                            await tx.RemoveAsync(change.Path, ct).ConfigureAwait(false);
                            continue;
                        }
                        int slash = change.Path.LastIndexOf('/');
                        if (slash > 0)
                        {
                            await tx.MakeDirsAsync(change.Path[..slash], ct).ConfigureAwait(false);
                        }
                        (Stream content, bool exec) = opened[i]!.Value;
                        await tx.WriteFileAsync(change.Path, content, exec, ct).ConfigureAwait(false);
                    }
                    catch (DataKitException e)
                    {
                        throw new CliException(e.Kind switch
                        {
                            DataKitErrorKind.NotFound => $"{at}: no such file or directory",
                            DataKitErrorKind.NotDirectory => $"{at}: a parent is a file, not a directory",
                            DataKitErrorKind.IsDirectory => $"{at}: is a directory (--delete it first to replace it)",
                            _ => $"{at}: {e.Message}",
                        });
                    }
                }
                await tx.SetMetadataAsync(meta.Author, meta.Committer, meta.Date, ct).ConfigureAwait(false);
                try
                {
                    await tx.CommitAsync(message, ct).ConfigureAwait(false);
                }
                catch (DataKitException e)
                {
                    throw new CliException($"commit to {branchName} refused: {e.Message}");
                }
                // The head after this commit: the commit itself, or the merge with a commit that landed meanwhile.
                Commit head = await branch.HeadAsync(ct).ConfigureAwait(false) ?? throw new CliException($"branch {branchName} vanished after the commit");
                await WriteOutAsync(head.Id + "\n", ct).ConfigureAwait(false);
                return 0;
            }
            finally
            {
                Close(opened);
            }
        });
    }

    private static void Close((Stream Content, bool Executable)?[] opened)
    {
        foreach ((Stream Content, bool Executable)? o in opened)
        {
            o?.Content.Dispose();
        }
    }

    // ---------- watch ----------

    private static Command Watch()
    {
        var url = UrlOption();
        var location = new Argument<string>("BRANCH[:PATH]") { Description = "The branch (it need not exist yet), or a path in it." };
        var count = new Option<int?>("--count", "-n") { HelpName = "N", Description = "Stop after N changes (default: until interrupted)." };
        var initial = new Option<bool>("--initial") { Description = "Print the current value first, then the changes." };
        var ids = new Option<bool>("--ids") { Description = "For a PATH: print one line per change (F-/X-/L-<blob>, D-<tree>, or an empty line when the path is gone) instead of the file's content." };
        var c = new Command("watch", "Print each new head of a branch, or each new content of a path in it, as commits land.") { location, count, initial, ids, url };
        c.SetAction((parse, ct) =>
        {
            Location at = Location.Parse(parse.GetValue(location)!, pathRequired: false);
            int? n = parse.GetValue(count);
            if (n is < 1)
            {
                throw new CliException("--count: must be 1 or more");
            }
            return Run(parse.GetValue(url)!, ct, client => WatchAsync(client, at, n ?? int.MaxValue, parse.GetValue(initial), parse.GetValue(ids), ct));
        });
        return c;
    }

    /// <summary>
    /// Follows head.live or the path's tree.live (reference/datakit.md §3): the first line is the current value, the
    /// rest are changes. These streams keep only the latest value, so a burst of commits may show as its last one.
    /// </summary>
    private static async Task<int> WatchAsync(DataKitClient client, Location at, int count, bool initial, bool ids, CancellationToken ct)
    {
        // mkdir of a branch writes nothing to the store: it lets this connection watch a branch that has no commit yet.
        Branch branch = await client.BranchAsync(at.Branch, ct).ConfigureAwait(false);
        await using Stream stdout = Console.OpenStandardOutput();
        int seen = 0;
        bool first = true;
        try
        {
            if (at.Path.Length == 0)
            {
                await foreach (Commit? head in branch.WatchHeadAsync(ct).ConfigureAwait(false))
                {
                    if (Started(ref first, at, initial))
                    {
                        continue;
                    }
                    await stdout.WriteAsync(Encoding.UTF8.GetBytes((head?.Id ?? "") + "\n"), ct).ConfigureAwait(false);
                    await stdout.FlushAsync(ct).ConfigureAwait(false);
                    if (++seen >= count)
                    {
                        break;
                    }
                }
            }
            else
            {
                await foreach (TreeNodeRef? node in branch.WatchPathAsync(at.Path, ct).ConfigureAwait(false))
                {
                    if (Started(ref first, at, initial))
                    {
                        continue;
                    }
                    if (ids || node is { Kind: ValueKind.Dir })
                    {
                        await stdout.WriteAsync(Encoding.UTF8.GetBytes((node?.Id ?? "") + "\n"), ct).ConfigureAwait(false);
                    }
                    else if (node is null)
                    {
                        await Console.Error.WriteLineAsync($"kit data: {at} removed").ConfigureAwait(false);
                    }
                    else
                    {
                        // The blob by id (trees/F-<hash>): the value this event named, even if the branch moved on since.
                        await client.Tree(node.Id).CopyFileToAsync("", stdout, ct).ConfigureAwait(false);
                    }
                    await stdout.FlushAsync(ct).ConfigureAwait(false);
                    if (++seen >= count)
                    {
                        break;
                    }
                }
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // Interrupted: the normal end of a watch without --count.
        }
        return 0;
    }

    /// <summary>
    /// True for the stream's first line (the current value) unless --initial asked for it. Either way the first line
    /// means the watch is in place: say so on stderr, so a script knows that a change made from now on will be seen.
    /// </summary>
    private static bool Started(ref bool first, Location at, bool initial)
    {
        if (!first)
        {
            return false;
        }
        first = false;
        Console.Error.WriteLine($"kit data: watching {at}");
        return !initial;
    }

    // ---------- shared ----------

    /// <summary>BRANCH[:PATH], checked before anything is sent.</summary>
    private readonly record struct Location(string Branch, string Path)
    {
        public static Location Parse(string text, bool pathRequired)
        {
            int colon = text.IndexOf(':', StringComparison.Ordinal);
            string branch = colon < 0 ? text : text[..colon];
            string path = colon < 0 ? "" : NormalizePath(text[(colon + 1)..], text);
            CheckBranch(branch);
            if (pathRequired && path.Length == 0)
            {
                throw new CliException($"{text}: expected BRANCH:PATH");
            }
            return new Location(branch, path);
        }

        public static void CheckBranch(string branch)
        {
            if (BranchName.Problem(branch) is string problem)
            {
                throw new CliException(BranchName.Message(branch, problem));
            }
            // git allows "feature/x", but the server's branch/ directory holds one 9P name per branch and a 9P name
            // is one path component (the server answers "Invalid name"): say so rather than "does not exist".
            if (branch.Contains('/', StringComparison.Ordinal))
            {
                throw new CliException($"branch {branch}: names with '/' cannot be reached over 9P yet (branch/ holds one path component per branch)");
            }
        }

        /// <summary>Slashes collapsed; "." and ".." refused, since 9P walks would leave the tree with them.</summary>
        public static string NormalizePath(string path, string context)
        {
            string[] parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
            foreach (string p in parts)
            {
                if (p is "." or "..")
                {
                    throw new CliException($"{context}: a path may not contain '.' or '..' components");
                }
            }
            return string.Join('/', parts);
        }

        public CliException NotFound() => new($"{this}: no such file or directory");

        public override string ToString() => Path.Length == 0 ? Branch : $"{Branch}:{Path}";
    }

    /// <summary>The tree of the branch's current head (one commit for the whole command), or null for a branch with none.</summary>
    private static async Task<Tree?> HeadTreeAsync(DataKitClient client, Location at, CancellationToken ct)
    {
        Branch branch = await client.ExistingBranchAsync(at.Branch, ct).ConfigureAwait(false)
            ?? throw new CliException($"branch {at.Branch} does not exist");
        Commit? head = await branch.HeadAsync(ct).ConfigureAwait(false);
        return head?.Tree;
    }

    private static async Task WriteOutAsync(string text, CancellationToken ct)
    {
        await using Stream stdout = Console.OpenStandardOutput();
        await stdout.WriteAsync(Encoding.UTF8.GetBytes(text), ct).ConfigureAwait(false);
        await stdout.FlushAsync(ct).ConfigureAwait(false);
    }

    /// <summary>Connects (bounded by <see cref="ConnectTimeout"/>), runs <paramref name="body"/>, and turns what can go wrong into one line.</summary>
    private static async Task<int> Run(string url, CancellationToken ct, Func<DataKitClient, Task<int>> body)
    {
        if (!ListenAddress.TryParseServer(url, out ListenAddress? address, out string error))
        {
            throw new CliException($"--url: {error}");
        }
        DataKitClient client;
        using (var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct))
        {
            timeout.CancelAfter(ConnectTimeout);
            try
            {
                client = await DataKitClient.ConnectAsync(address!, timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                throw new CliException($"cannot connect to DataKit at {url}: no answer within {ConnectTimeout.TotalSeconds:0} s");
            }
            catch (Exception e) when (e is SocketException or IOException or NinePException)
            {
                throw new CliException($"cannot connect to DataKit at {url}: {e.Message} (is `kit data serve` running there?)");
            }
        }
        await using (client.ConfigureAwait(false))
        {
            try
            {
                return await body(client).ConfigureAwait(false);
            }
            catch (DataKitException e)
            {
                throw new CliException(e.Message);
            }
            catch (Exception e) when (e is SocketException or IOException or NinePException)
            {
                throw new CliException($"DataKit at {url}: {e.Message}");
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return 130; // interrupted (128 + SIGINT), as a shell reports it
            }
        }
    }
}
