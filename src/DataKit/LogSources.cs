using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;

namespace Kit.DataKit;

/// <summary>
/// Runtime-adjustable log levels per source, exposed as <c>/debug/src/&lt;source&gt;/{doc,level}</c>
/// (reference/datakit.md §1.8). Level names are the original's: quiet, app, error, warning, info, debug.
/// A logger filter asks <see cref="IsEnabled"/>; sources are matched by category prefix.
/// </summary>
public sealed class LogSources
{
    private readonly ConcurrentDictionary<string, Source> _sources = new(StringComparer.Ordinal);

    public sealed class Source(string name, string doc, LogLevel level)
    {
        public string Name { get; } = name;
        public string Doc { get; } = doc;
        public LogLevel Level { get; set; } = level;
    }

    public LogSources(LogLevel initial)
    {
        Register("datakit", "DataKit server, store and 9P connections", initial);
    }

    public Source Register(string name, string doc, LogLevel level) => _sources.GetOrAdd(name, _ => new Source(name, doc, level));

    public IReadOnlyList<Source> All => _sources.Values.OrderBy(s => s.Name, StringComparer.Ordinal).ToArray();

    public Source? Find(string name) => _sources.GetValueOrDefault(name);

    public bool IsEnabled(string? category, LogLevel level)
    {
        Source? best = null;
        foreach (Source s in _sources.Values)
        {
            if (category is not null && category.StartsWith(s.Name, StringComparison.Ordinal) && (best is null || s.Name.Length > best.Name.Length))
            {
                best = s;
            }
        }
        return best is null || level >= best.Level;
    }

    public static string Print(LogLevel level) => level switch
    {
        LogLevel.None => "quiet",
        LogLevel.Critical => "app",
        LogLevel.Error => "error",
        LogLevel.Warning => "warning",
        LogLevel.Information => "info",
        _ => "debug",
    };

    public static bool TryParse(string text, out LogLevel level)
    {
        level = text switch
        {
            "quiet" => LogLevel.None,
            "app" => LogLevel.Critical,
            "error" => LogLevel.Error,
            "warning" => LogLevel.Warning,
            "info" => LogLevel.Information,
            "debug" => LogLevel.Debug,
            _ => (LogLevel)(-1),
        };
        return (int)level >= 0;
    }
}
