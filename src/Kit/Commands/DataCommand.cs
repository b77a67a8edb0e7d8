using System.CommandLine;
using System.Net.Sockets;
using Kit.DataKit;
using Kit.NineP.Server;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit data serve`: DataKit, a 9P file server over a git repository (branches, transactions, merges and watches
/// as files). Flag names follow the original datakit (`--git`, `--listen-9p`/`--url`), which scripts depend on.
/// </summary>
internal static class DataCommand
{
    public static Command Create()
    {
        var git = new Option<string?>("--git")
        {
            HelpName = "DIR",
            Description = "Git repository holding the store (created bare if missing or empty). Default: $XDG_DATA_HOME/kit/datakit, else ~/.local/share/kit/datakit.",
        };
        var listen = new Option<string[]>("--listen-9p", "--url")
        {
            HelpName = "ADDRESS",
            Description = "Where to serve 9P: tcp://HOST:PORT or unix:PATH (repeatable, or comma-separated). Default: tcp://127.0.0.1:5640.",
        };
        // Limits (issue 16): bytes of edited files that transactions may hold, ENOSPC beyond; EFBIG for one file past a transaction's.
        var maxTx = SizeOption("--max-transaction-bytes", "one transaction's edited files", DataKitOptions.Default.MaxTransactionBytes);
        var maxConn = SizeOption("--max-connection-bytes", "all transactions of one connection", DataKitOptions.Default.MaxConnectionBytes);
        var maxServer = SizeOption("--max-server-bytes", "all transactions of the server", DataKitOptions.Default.MaxServerBytes);
        // Durability (issue 16 item 2): what an acknowledged commit survives; docs/datakit.md gives the cost.
        var durability = new Option<string>("--durability")
        {
            HelpName = "full|none",
            Description = "full (default): commits are fsync'd before they are acknowledged and survive a power cut; none: the OS writes them back later (faster, a power cut can lose the last seconds).",
            DefaultValueFactory = _ => "full",
        };
        durability.AcceptOnlyFromAmong("full", "none");
        // Remotes (docs/datakit.md): none allowed unless the operator says which URL prefixes.
        var allowRemote = new Option<string[]>("--allow-remote")
        {
            HelpName = "PREFIX",
            Description = "Let remotes/*/url name URLs under PREFIX (a path, file://, git://, http(s)://, ssh:// or host: prefix; repeatable). Default: none.",
        };
        var remoteTimeout = new Option<int>("--remote-timeout")
        {
            HelpName = "SECONDS",
            Description = "Time limit of one fetch or push; git is killed after it. Default: 60.",
            DefaultValueFactory = _ => 60,
        };
        var replicateInterval = new Option<double>("--replicate-interval")
        {
            HelpName = "SECONDS",
            Description = "How often branches in remotes/*/sync-branches are fetched and brought in step. Default: 2.",
            DefaultValueFactory = _ => 2,
        };
        // Commit metadata (issue 16): defaults for transactions whose author/committer files are empty.
        var author = new Option<string?>("--author") { HelpName = "\"NAME <EMAIL>\"", Description = "Default commit author (and committer). Default: \"datakit <datakit@mobyproject.org>\"." };
        var committer = new Option<string?>("--committer") { HelpName = "\"NAME <EMAIL>\"", Description = "Default committer. Default: the --author." };
        var serve = new Command("serve", "Serve the DataKit tree over 9P (9P2000, 9P2000.u, 9P2000.L) until interrupted.")
        {
            git, listen, durability, maxTx, maxConn, maxServer, allowRemote, remoteTimeout, replicateInterval, author, committer,
        };
        Supervision.AddTo(serve);

        // The server-wide settings, each group checked with a one-line error before the store is opened.
        DataKitOptions Settings(ParseResult parse)
        {
            DataKitOptions settings = DataKitOptions.Default with
            {
                MaxTransactionBytes = parse.GetValue(maxTx),
                MaxConnectionBytes = parse.GetValue(maxConn),
                MaxServerBytes = parse.GetValue(maxServer),
                Durability = parse.GetValue(durability) == "none" ? Durability.None : Durability.Full,
            };
            settings = RemoteSettings(settings, parse.GetValue(allowRemote) ?? [], parse.GetValue(remoteTimeout), parse.GetValue(replicateInterval));
            settings = CommitDefaults(settings, parse.GetValue(author), parse.GetValue(committer));
            return settings;
        }

        serve.SetAction((parse, ct) => ServeAsync(parse, parse.GetValue(git), parse.GetValue(listen) ?? [], Settings(parse), ct));
        var data = new Command("data", "DataKit: a git-backed store served as a 9P file system, and small clients for scripts.") { serve };
        foreach (Command c in DataClientCommands.Create())
        {
            data.Subcommands.Add(c);
        }
        return data;
    }

    /// <summary>--author and --committer into the settings, checked as the server will check a transaction's files.</summary>
    private static DataKitOptions CommitDefaults(DataKitOptions settings, string? author, string? committer)
    {
        LibGit2Sharp.Identity? Parse(string flag, string? value) =>
            value is null ? null
            : Kit.DataKit.Store.CommitMetadata.TryParseIdentity(value, out LibGit2Sharp.Identity? id, out string error) ? id
            : throw new CliException($"{flag}: {error}");
        return settings with { Author = Parse("--author", author), Committer = Parse("--committer", committer) };
    }

    /// <summary>A byte count flag: a number with an optional K, M, G or T suffix (powers of 1024).</summary>
    private static Option<long> SizeOption(string name, string what, long fallback) => new(name)
    {
        HelpName = "BYTES",
        Description = $"Most bytes {what} may hold (suffix K, M, G, T; ENOSPC beyond).",
        DefaultValueFactory = _ => fallback,
        CustomParser = r =>
        {
            string text = r.Tokens.Count == 1 ? r.Tokens[0].Value.Trim() : "";
            int shift = text.Length == 0 ? 0 : char.ToUpperInvariant(text[^1]) switch { 'K' => 10, 'M' => 20, 'G' => 30, 'T' => 40, _ => 0 };
            string digits = shift == 0 ? text : text[..^1];
            if (!long.TryParse(digits, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long n)
                || n > (long.MaxValue >> shift))
            {
                r.AddError($"{name}: expected a byte count such as 8G, got \"{text}\"");
                return 0;
            }
            return n << shift;
        },
    };

    public static string DefaultStore()
    {
        string? xdg = Environment.GetEnvironmentVariable("XDG_DATA_HOME");
        string baseDir = string.IsNullOrEmpty(xdg)
            ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".local", "share")
            : xdg;
        return Path.Combine(baseDir, "kit", "datakit");
    }

    private static DataKitOptions RemoteSettings(DataKitOptions settings, string[] allow, int timeoutSeconds, double intervalSeconds)
    {
        if (timeoutSeconds is < 1 or > 86_400)
        {
            throw new CliException("--remote-timeout: give 1 to 86400 seconds");
        }
        if (intervalSeconds is < 0.1 or > 86_400 || double.IsNaN(intervalSeconds))
        {
            throw new CliException("--replicate-interval: give 0.1 to 86400 seconds");
        }
        try
        {
            return settings with
            {
                AllowRemotes = new Kit.DataKit.Store.RemotePolicy(allow),
                RemoteTimeout = TimeSpan.FromSeconds(timeoutSeconds),
                ReplicateInterval = TimeSpan.FromSeconds(intervalSeconds),
            };
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    private static async Task<int> ServeAsync(ParseResult parse, string? gitPath, string[] listenArgs, DataKitOptions settings, CancellationToken ct)
    {
        var addresses = new List<ListenAddress>();
        foreach (string text in listenArgs.SelectMany(a => a.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)))
        {
            if (!ListenAddress.TryParse(text, out ListenAddress? a, out string error))
            {
                throw new CliException($"--listen-9p: {error}");
            }
            addresses.Add(a!);
        }
        if (addresses.Count == 0)
        {
            ListenAddress.TryParse("tcp://127.0.0.1:5640", out ListenAddress? a, out _);
            addresses.Add(a!);
        }
        string store = gitPath ?? DefaultStore();
        // Levels start at the global --log-level (-v: connections and protocol errors) and can be changed at run time
        // through /debug/src/<source>/level.
        var sources = new LogSources(KitLogging.Level);
        using ILoggerFactory loggers = KitLogging.CreateFactory(sources.IsEnabled);
        ILogger logger = loggers.CreateLogger("datakit");
        DataKitServer server;
        try
        {
            NativeGit.Prepare();
            server = new DataKitServer(store, logger, null, sources, settings);
        }
        catch (LibGit2Sharp.LibGit2SharpException e)
        {
            throw new CliException($"cannot open git repository {store}: {e.Message}");
        }
        catch (IOException e)
        {
            // A file, or a directory with other things in it: GitStore.Open says which, and touches nothing.
            throw new CliException($"--git: {e.Message}");
        }
        await using (server.ConfigureAwait(false))
        {
            var bound = new List<string>();
            foreach (ListenAddress a in addresses)
            {
                try
                {
                    // The address as bound: tcp://127.0.0.1:0 becomes the port the kernel chose.
                    System.Net.EndPoint at = server.Listen(a);
                    bound.Add(a.IsUnix ? a.ToString() : $"tcp://{at}");
                }
                catch (Exception e) when (e is SocketException or IOException)
                {
                    // EADDRINUSE: another server (maybe another kit) has the port; say so rather than "Address already in use".
                    throw new CliException(Kit.Linux.ReuseAddress.IsAddressInUse(e)
                        ? $"cannot listen on {a}: address in use (another process listens there)"
                        : $"cannot listen on {a}: {e.Message}");
                }
            }
            await Console.Error.WriteLineAsync($"kit data: serving {store} on {string.Join(", ", bound)}").ConfigureAwait(false);
            using Supervision ready = Supervision.Ready(parse);
            try
            {
                await Task.Delay(Timeout.Infinite, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
        }
        return 0;
    }
}
