using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Kit.Agent.Protocol;

// The JSON payloads of control frames. These are the wire shapes; the public API (ExecRequest, AgentInfo) maps onto
// them so the wire can keep its own names.

internal sealed record HelloMessage(int Version)
{
    public string? AgentVersion { get; init; }
    public string? Hostname { get; init; }
    public string? Kernel { get; init; }
}

internal sealed record ErrorMessage(string Message)
{
    /// <summary>The program of an Exec does not exist (the host's 127).</summary>
    public bool NotFound { get; init; }
}

internal sealed record ExecMessage(string[] Argv)
{
    public Dictionary<string, string>? Env { get; init; }
    public string? Workdir { get; init; }
    public bool Tty { get; init; }
    public ushort Rows { get; init; }
    public ushort Cols { get; init; }
}

internal sealed record ForwardUnixMessage(string Path);

internal sealed record StartedMessage(int Pid);

internal sealed record SignalMessage(int Signo);

internal sealed record ResizeMessage(ushort Rows, ushort Cols);

internal sealed record ExitMessage(int Code)
{
    /// <summary>The signal that killed the process (then Code is 128 + Signal), else null.</summary>
    public int? Signal { get; init; }
}

internal sealed record PortsMessage(ListeningPort[] Ports);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(HelloMessage))]
[JsonSerializable(typeof(ErrorMessage))]
[JsonSerializable(typeof(ExecMessage))]
[JsonSerializable(typeof(ForwardUnixMessage))]
[JsonSerializable(typeof(StartedMessage))]
[JsonSerializable(typeof(SignalMessage))]
[JsonSerializable(typeof(ResizeMessage))]
[JsonSerializable(typeof(ExitMessage))]
[JsonSerializable(typeof(PortsMessage))]
internal sealed partial class AgentJsonContext : JsonSerializerContext;

/// <summary>Decoding of control payloads: anything malformed becomes an <see cref="AgentProtocolException"/>.</summary>
internal static class Messages
{
    public static T Decode<T>(Frame frame, JsonTypeInfo<T> info) where T : class
    {
        T? value;
        try
        {
            value = JsonSerializer.Deserialize(frame.Payload.Span, info);
        }
        catch (Exception e) when (e is JsonException or NotSupportedException or ArgumentException or InvalidOperationException
                                      or FormatException or OverflowException)
        {
            throw new AgentProtocolException($"malformed {frame.Type} payload: {e.Message}", e);
        }
        return value ?? throw new AgentProtocolException($"{frame.Type} payload is null");
    }

    /// <summary>The message of an Error frame, or a placeholder if even that is malformed.</summary>
    public static ErrorMessage DecodeError(Frame frame)
    {
        try
        {
            return Decode(frame, AgentJsonContext.Default.ErrorMessage);
        }
        catch (AgentProtocolException)
        {
            return new ErrorMessage("(malformed error message)");
        }
    }

    public static AgentProtocolException Unexpected(Frame? frame, string expected) => frame is null
        ? new AgentProtocolException($"connection closed; expected {expected}")
        : new AgentProtocolException($"unexpected {frame.Value.Type} frame; expected {expected}");
}
