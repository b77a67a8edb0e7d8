using System.Runtime.CompilerServices;

namespace Kit.Agent.Protocol;

/// <summary>
/// The host's side of one agent connection. The caller connects the stream (vsock through the VMM's Unix socket, or a
/// Unix socket in tests) and hands it over: the client owns it from then on. One connection carries one request, so
/// each of <see cref="ExecAsync"/>, <see cref="WatchPortsAsync"/>, <see cref="ForwardUnixAsync"/> and
/// <see cref="ShutdownAsync"/> needs a client of its own; a second request on the same client throws
/// <see cref="InvalidOperationException"/>.
/// </summary>
public sealed class AgentClient : IAsyncDisposable
{
    private readonly Stream _stream;
    private readonly FrameReader _reader;
    private readonly FrameWriter _writer;
    private int _requested;
    private bool _detached;

    private AgentClient(Stream stream)
    {
        _stream = stream;
        _reader = new FrameReader(stream);
        _writer = new FrameWriter(stream);
        Info = new AgentInfo(0, "", "", "");
    }

    /// <summary>What the agent reported in its Hello.</summary>
    public AgentInfo Info { get; private set; }

    internal FrameReader Reader => _reader;

    internal FrameWriter Writer => _writer;

    /// <summary>Exchanges Hello on <paramref name="stream"/>, which the client then owns (also when this throws).</summary>
    /// <exception cref="AgentProtocolException">The agent refused the version, sent garbage or closed.</exception>
    public static async Task<AgentClient> ConnectAsync(Stream stream, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(stream);
        var client = new AgentClient(stream);
        try
        {
            await client._writer.WriteJsonAsync(FrameType.Hello, new HelloMessage(AgentProtocolVersion.Current),
                AgentJsonContext.Default.HelloMessage, ct).ConfigureAwait(false);
            Frame? frame = await client._reader.ReadAsync(ct).ConfigureAwait(false);
            if (frame is { Type: FrameType.Error } error)
            {
                throw new AgentProtocolException($"agent refused the connection: {Messages.DecodeError(error).Message}");
            }
            if (frame is not { Type: FrameType.Hello } hello)
            {
                throw Messages.Unexpected(frame, "Hello");
            }
            HelloMessage message = Messages.Decode(hello, AgentJsonContext.Default.HelloMessage);
            if (message.Version != AgentProtocolVersion.Current)
            {
                throw new AgentProtocolException(
                    $"agent speaks protocol version {message.Version}; this host speaks {AgentProtocolVersion.Current}");
            }
            client.Info = new AgentInfo(message.Version, message.AgentVersion ?? "", message.Hostname ?? "", message.Kernel ?? "");
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Starts a command in the guest.</summary>
    /// <exception cref="AgentExecException">The agent could not start it; <see cref="AgentExecException.IsNotFound"/>
    /// (no such program) is the host's exit code 127, any other refusal 126.</exception>
    public async Task<ExecSession> ExecAsync(ExecRequest request, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(request);
        BeginRequest();
        var message = new ExecMessage([.. request.Argv])
        {
            Env = new Dictionary<string, string>(request.Env),
            Workdir = request.Workdir,
            Tty = request.Tty,
            Rows = request.Rows,
            Cols = request.Cols,
        };
        await _writer.WriteJsonAsync(FrameType.Exec, message, AgentJsonContext.Default.ExecMessage, ct).ConfigureAwait(false);
        Frame? frame = await _reader.ReadAsync(ct).ConfigureAwait(false);
        switch (frame)
        {
            case { Type: FrameType.Started } started:
                return new ExecSession(this, Messages.Decode(started, AgentJsonContext.Default.StartedMessage).Pid, request.Tty);
            case { Type: FrameType.Error } error:
                ErrorMessage refusal = Messages.DecodeError(error);
                throw new AgentExecException(refusal.Message, refusal.NotFound);
            default:
                throw Messages.Unexpected(frame, "Started or Error");
        }
    }

    /// <summary>
    /// The guest's listening sockets: the current set at once, then the whole set again each time it changes. Ends
    /// when the agent closes the connection (the guest shuts down); stop it with <paramref name="ct"/>.
    /// </summary>
    public async IAsyncEnumerable<IReadOnlyList<ListeningPort>> WatchPortsAsync([EnumeratorCancellation] CancellationToken ct)
    {
        BeginRequest();
        await _writer.WriteAsync(FrameType.WatchPorts, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        while (true)
        {
            Frame? frame = await _reader.ReadAsync(ct).ConfigureAwait(false);
            switch (frame)
            {
                case null:
                    yield break;
                case { Type: FrameType.Ports } ports:
                    yield return Messages.Decode(ports, AgentJsonContext.Default.PortsMessage).Ports;
                    break;
                case { Type: FrameType.Error } error:
                    throw new AgentProtocolException($"agent: {Messages.DecodeError(error).Message}");
                default:
                    throw Messages.Unexpected(frame, "Ports");
            }
        }
    }

    /// <summary>
    /// Connects to the Unix socket <paramref name="guestPath"/> in the guest (e.g. /run/docker.sock) and returns this
    /// connection's stream, now a raw byte stream to that socket. The caller owns the returned stream; to half-close,
    /// shut down the sending side of the socket beneath it (the agent then half-closes the guest socket too).
    /// </summary>
    /// <exception cref="IOException">The agent could not connect to the guest socket.</exception>
    public async Task<Stream> ForwardUnixAsync(string guestPath, CancellationToken ct)
    {
        ArgumentException.ThrowIfNullOrEmpty(guestPath);
        BeginRequest();
        await _writer.WriteJsonAsync(FrameType.ForwardUnix, new ForwardUnixMessage(guestPath),
            AgentJsonContext.Default.ForwardUnixMessage, ct).ConfigureAwait(false);
        Frame? frame = await _reader.ReadAsync(ct).ConfigureAwait(false);
        switch (frame)
        {
            case { Type: FrameType.Ok }:
                // The reader never reads past a frame, so every byte after Ok is still in the stream for the caller.
                _detached = true;
                return _stream;
            case { Type: FrameType.Error } error:
                throw new IOException($"guest socket {guestPath}: {Messages.DecodeError(error).Message}");
            default:
                throw Messages.Unexpected(frame, "Ok or Error");
        }
    }

    /// <summary>Asks the guest to sync and power off; returns once the agent has accepted (the VM exits soon after).</summary>
    public async Task ShutdownAsync(CancellationToken ct)
    {
        BeginRequest();
        await _writer.WriteAsync(FrameType.Shutdown, ReadOnlyMemory<byte>.Empty, ct).ConfigureAwait(false);
        Frame? frame = await _reader.ReadAsync(ct).ConfigureAwait(false);
        switch (frame)
        {
            case { Type: FrameType.Ok }:
                return;
            case { Type: FrameType.Error } error:
                throw new AgentProtocolException($"agent refused to shut down: {Messages.DecodeError(error).Message}");
            default:
                throw Messages.Unexpected(frame, "Ok");
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (!_detached)
        {
            await _stream.DisposeAsync().ConfigureAwait(false);
        }
        _reader.Dispose();
    }

    private void BeginRequest()
    {
        if (Interlocked.Exchange(ref _requested, 1) != 0)
        {
            throw new InvalidOperationException("one connection carries one request; connect a new AgentClient");
        }
    }
}
