using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Kit.Cli.Machines;

/// <summary>A request on a machine daemon's control socket: one JSON line; the answer is one JSON line.</summary>
/// <param name="Op">status | wait (answers once the agent answered, or the start failed) | down.</param>
internal sealed record ControlRequest(string Op, bool Force = false, int TimeoutSeconds = 60);

internal sealed record ControlReply(bool Ok, string? Error = null, MachineStatus? Status = null);

/// <summary>What <c>kit status</c> shows (and prints as JSON with --json).</summary>
internal sealed record MachineStatus
{
    public required string Name { get; init; }

    /// <summary>starting, running, stopping, stopped or crashed.</summary>
    public required string State { get; init; }

    public string? Accel { get; init; }

    public int Cpus { get; init; }

    public long MemoryMiB { get; init; }

    public long DiskMiB { get; init; }

    public string? Address { get; init; }

    public IReadOnlyList<ForwardState> Ports { get; init; } = [];

    public IReadOnlyList<string> Mounts { get; init; } = [];

    public double? UptimeSeconds { get; init; }

    /// <summary>Seconds from the daemon's start to the agent's first answer.</summary>
    public double? BootSeconds { get; init; }

    public string? DockerSocket { get; init; }

    public string? DataKitSocket { get; init; }

    /// <summary>The inspector's page (<c>kit up --ui</c>), or null.</summary>
    public string? Ui { get; init; }

    /// <summary>The gateway's policy and proxies at start (<c>kit up --policy</c>, <c>--http-proxy</c>, ...), or null: none.</summary>
    public string? Gateway { get; init; }

    public int? Pid { get; init; }

    public string? Log { get; init; }

    /// <summary>For a crashed machine: the last lines of its log.</summary>
    public IReadOnlyList<string>? LogTail { get; init; }

    public IReadOnlyList<string> Problems { get; init; } = [];
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, WriteIndented = false,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ControlRequest))]
[JsonSerializable(typeof(ControlReply))]
[JsonSerializable(typeof(MachineStatus))]
[JsonSerializable(typeof(List<MachineStatus>))]
internal sealed partial class ControlJson : JsonSerializerContext;

/// <summary>The client end: one request per connection.</summary>
internal static class ControlClient
{
    private const int MaxReply = 1 << 20;

    /// <summary>The daemon's answer; null when no daemon serves the socket.</summary>
    public static async Task<ControlReply?> AskAsync(string socketPath, ControlRequest request, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cts.Token).ConfigureAwait(false);
        }
        catch (SocketException)
        {
            return null;
        }
        using var stream = new NetworkStream(socket, ownsSocket: false);
        byte[] line = JsonSerializer.SerializeToUtf8Bytes(request, ControlJson.Default.ControlRequest);
        await stream.WriteAsync(line, cts.Token).ConfigureAwait(false);
        await stream.WriteAsync("\n"u8.ToArray(), cts.Token).ConfigureAwait(false);
        string? reply = await ReadLineAsync(stream, cts.Token).ConfigureAwait(false);
        return reply is null ? null : JsonSerializer.Deserialize(reply, ControlJson.Default.ControlReply);
    }

    /// <summary>One line of at most 1 MiB; null at end of stream.</summary>
    public static async Task<string?> ReadLineAsync(Stream stream, CancellationToken ct)
    {
        var buffer = new MemoryStream();
        byte[] chunk = new byte[1];
        while (await stream.ReadAsync(chunk, ct).ConfigureAwait(false) == 1)
        {
            if (chunk[0] == '\n')
            {
                return Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
            }
            if (buffer.Length >= MaxReply)
            {
                throw new IOException("control socket: line too long");
            }
            buffer.WriteByte(chunk[0]);
        }
        return buffer.Length == 0 ? null : throw new IOException("control socket: connection closed mid-line");
    }
}
