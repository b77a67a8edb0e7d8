using Microsoft.Extensions.Logging;

namespace Kit.NineP.Server;

internal static partial class Log
{
    [LoggerMessage(Level = LogLevel.Information, Message = "9P listening on {Address}")]
    public static partial void Listening(ILogger logger, string address);

    [LoggerMessage(Level = LogLevel.Debug, Message = "9P connection from {Peer}")]
    public static partial void Accepted(ILogger logger, string peer);

    [LoggerMessage(Level = LogLevel.Debug, Message = "9P connection closed: {Reason}")]
    public static partial void Closed(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "9P protocol violation, closing the connection: {Reason}")]
    public static partial void ProtocolViolation(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "9P version {Version} msize {Msize}")]
    public static partial void Negotiated(ILogger logger, string version, uint msize);

    [LoggerMessage(Level = LogLevel.Error, Message = "9P handler failed on {Type}")]
    public static partial void HandlerFailed(ILogger logger, Exception e, string type);

    [LoggerMessage(Level = LogLevel.Warning, Message = "9P too many connections; refusing one")]
    public static partial void TooManyConnections(ILogger logger);
}
