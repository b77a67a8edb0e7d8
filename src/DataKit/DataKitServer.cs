using Kit.DataKit.Fs;
using Kit.DataKit.Store;
using Kit.NineP.Server;
using Microsoft.Extensions.Logging;

namespace Kit.DataKit;

/// <summary>The DataKit service: a git store, a poller that notices outside git writers, and 9P listeners.</summary>
public sealed partial class DataKitServer : IAsyncDisposable
{
    [LoggerMessage(Level = LogLevel.Warning, Message = "removed ref lock files a killed writer left in the store (nothing in them was acknowledged): {Files}")]
    private static partial void LogStaleLocks(ILogger logger, string files);

    private readonly HeadPoller _poller;

    public DataKitServer(string gitPath, ILogger? logger = null, NinePServerOptions? options = null, LogSources? logSources = null,
        DataKitOptions? settings = null)
    {
        Settings = settings ?? DataKitOptions.Default;
        Store = GitStore.Open(gitPath, syncWrites: Settings.Durability == Durability.Full);
        if (Store.RemovedStaleLocks.Count > 0)
        {
            LogStaleLocks(logger ?? Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance, string.Join(", ", Store.RemovedStaleLocks));
        }
        LogSources = logSources ?? new LogSources(LogLevel.Warning);
        _poller = new HeadPoller(Store, TimeSpan.FromMilliseconds(200));
        // Server-wide, unlike the original's per-connection remotes: auto-push and replication follow every session's commits.
        Remotes = new RemoteRegistry(Store, Settings);
        var serverBytes = new ByteBudget(Settings.MaxServerBytes, null, "server");
        NineP = new NinePServer(() => new DataKitSession(Store, LogSources, Settings, Remotes, serverBytes), options, logger);
    }

    public DataKitOptions Settings { get; }

    public LogSources LogSources { get; }

    public GitStore Store { get; }

    public RemoteRegistry Remotes { get; }
    public NinePServer NineP { get; }

    public System.Net.EndPoint Listen(ListenAddress address) => NineP.Listen(address);

    public async ValueTask DisposeAsync()
    {
        await NineP.DisposeAsync().ConfigureAwait(false);
        await Remotes.DisposeAsync().ConfigureAwait(false);
        await _poller.DisposeAsync().ConfigureAwait(false);
        Store.Dispose();
    }
}
