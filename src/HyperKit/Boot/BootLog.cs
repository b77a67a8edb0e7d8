using Microsoft.Extensions.Logging;

namespace Kit.HyperKit.Boot;

/// <summary>Debug lines of the kernel loader: why a boot took the bzImage path or decompressed again.</summary>
internal static partial class BootLog
{
    [LoggerMessage(Level = LogLevel.Debug, Message = "booting the bzImage as it is (the guest decompresses): {Reason}")]
    public static partial void BzImagePath(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "decompressed kernel cache miss for {Key}: {Reason}")]
    public static partial void CacheMiss(ILogger logger, string key, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "decompressed kernel cache not written: {Reason}")]
    public static partial void CacheNotWritten(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "kernel placed where it was linked (no KASLR): {Reason}")]
    public static partial void NoKaslr(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "KASLR: kernel at physical 0x{Physical:X}, virtual base 0x{Virtual:X} (table read and checked in {PlanMilliseconds:F1} ms, relocated in {ApplyMilliseconds:F1} ms)")]
    public static partial void Kaslr(ILogger logger, ulong physical, ulong @virtual, double planMilliseconds, double applyMilliseconds);
}
