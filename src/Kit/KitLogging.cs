using System.CommandLine;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;

namespace Kit.Cli;

/// <summary>
/// kit's logs, the same for every command: the global options <c>--log-level</c>, <c>-v</c>/<c>-q</c> and
/// <c>--log-format text|json</c>, read once before the command runs; every line goes to stderr (stdout belongs to the
/// command's own output and to the guest console). Text lines carry a UTC timestamp, the level and a short category
/// (<c>2026-12-07T05:40:01.123Z info vpnkit.Dns: ...</c>); JSON is Microsoft.Extensions.Logging's JSON console format,
/// one object per line, for log collectors.
/// </summary>
internal static class KitLogging
{
    private static readonly string[] Levels = ["trace", "debug", "info", "warning", "error", "none"];

    public static readonly Option<string?> LevelOption = new("--log-level")
    {
        Description = "Least severe log level written to stderr: trace, debug, info, warning (default), error or none.",
        HelpName = "LEVEL",
        Recursive = true,
    };

    public static readonly Option<bool> VerboseOption = new("--verbose", "-v")
    {
        Description = "Same as --log-level debug.",
        Recursive = true,
    };

    public static readonly Option<bool> QuietOption = new("--quiet", "-q")
    {
        Description = "Same as --log-level error.",
        Recursive = true,
    };

    public static readonly Option<string?> FormatOption = new("--log-format")
    {
        Description = "Log line format: text (default) or json (one object per line).",
        HelpName = "FORMAT",
        Recursive = true,
    };

    static KitLogging()
    {
        // One line naming every choice (AcceptOnlyFromAmong prints one choice per line).
        OneOf(LevelOption, Levels);
        OneOf(FormatOption, ["text", "json"]);
    }

    private static void OneOf(Option<string?> option, string[] choices) => option.Validators.Add(r =>
    {
        if (r.GetValueOrDefault<string?>() is string v && !choices.Contains(v))
        {
            r.AddError($"{option.Name}: '{v}' is not one of {string.Join(", ", choices)}");
        }
    });

    /// <summary>The level chosen for this run (KIT_DEBUG, the older switch, still means debug).</summary>
    public static LogLevel Level { get; private set; } =
        Environment.GetEnvironmentVariable("KIT_DEBUG") is { Length: > 0 } ? LogLevel.Debug : LogLevel.Warning;

    public static bool Json { get; private set; }

    public static void AddTo(RootCommand root)
    {
        root.Options.Add(LevelOption);
        root.Options.Add(VerboseOption);
        root.Options.Add(QuietOption);
        root.Options.Add(FormatOption);
    }

    /// <summary>Reads the global options of a parsed command line; an explicit --log-level wins over -v and -q.</summary>
    public static void Configure(ParseResult parse)
    {
        if (parse.GetValue(LevelOption) is string level)
        {
            Level = Parse(level);
        }
        else if (parse.GetValue(VerboseOption))
        {
            Level = LogLevel.Debug;
        }
        else if (parse.GetValue(QuietOption))
        {
            Level = LogLevel.Error;
        }
        Json = parse.GetValue(FormatOption) == "json";
    }

    public static LogLevel Parse(string level) => level switch
    {
        "trace" => LogLevel.Trace,
        "debug" => LogLevel.Debug,
        "info" => LogLevel.Information,
        "warning" => LogLevel.Warning,
        "error" => LogLevel.Error,
        _ => LogLevel.None,
    };

    /// <summary>
    /// A logger factory writing at <see cref="Level"/> in the chosen format. <paramref name="filter"/> narrows further
    /// (DataKit's run-time per-source levels); with it the factory passes everything and lets the filter decide.
    /// </summary>
    public static ILoggerFactory CreateFactory(Func<string?, LogLevel, bool>? filter = null)
    {
        if (Level == LogLevel.None && filter is null)
        {
            return NullLoggerFactory.Instance;
        }
        return LoggerFactory.Create(b =>
        {
            if (Json)
            {
                b.AddJsonConsole(o =>
                {
                    o.TimestampFormat = "yyyy-MM-dd'T'HH:mm:ss.fff'Z'";
                    o.UseUtcTimestamp = true;
                });
            }
            else
            {
                b.AddConsole(o => o.FormatterName = KitConsoleFormatter.FormatterName);
                b.Services.AddSingleton<ConsoleFormatter, KitConsoleFormatter>();
            }
            b.Services.Configure<ConsoleLoggerOptions>(o => o.LogToStandardErrorThreshold = LogLevel.Trace);
            if (filter is null)
            {
                b.SetMinimumLevel(Level);
            }
            else
            {
                b.SetMinimumLevel(LogLevel.Trace).AddFilter(filter);
            }
        });
    }
}

/// <summary>
/// One line per entry: <c>TIMESTAMP LEVEL CATEGORY: MESSAGE</c>, then the exception's type and message (its stack at
/// debug and trace only). The category loses the namespace prefix every kit type shares, and the event id is left out:
/// the source generator hashes method names into ids that mean nothing to a reader.
/// </summary>
internal sealed class KitConsoleFormatter() : ConsoleFormatter(FormatterName)
{
    public const string FormatterName = "kit";

    public override void Write<TState>(in LogEntry<TState> entry, IExternalScopeProvider? scopes, TextWriter writer)
    {
        string message = entry.Formatter(entry.State, entry.Exception);
        if (message.Length == 0 && entry.Exception is null)
        {
            return;
        }
        writer.Write(DateTime.UtcNow.ToString("yyyy-MM-dd'T'HH:mm:ss.fff'Z'", System.Globalization.CultureInfo.InvariantCulture));
        writer.Write(' ');
        writer.Write(entry.LogLevel switch
        {
            LogLevel.Trace => "trace",
            LogLevel.Debug => "debug",
            LogLevel.Information => "info",
            LogLevel.Warning => "warn",
            LogLevel.Error => "error",
            _ => "crit",
        });
        writer.Write(' ');
        writer.Write(ShortCategory(entry.Category));
        writer.Write(": ");
        writer.Write(message.ReplaceLineEndings(" "));
        if (entry.Exception is Exception e)
        {
            writer.Write(entry.LogLevel <= LogLevel.Debug ? $" ({e})".ReplaceLineEndings(" | ") : $" ({e.GetType().Name}: {e.Message})");
        }
        writer.Write('\n');
    }

    internal static string ShortCategory(string category) =>
        category.StartsWith("Kit.", StringComparison.Ordinal) ? category["Kit.".Length..] : category;
}
