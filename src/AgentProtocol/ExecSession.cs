using System.Buffers;

namespace Kit.Agent.Protocol;

/// <summary>
/// A command running in the guest. <see cref="RunAsync"/> pumps its output and returns its exit code; the other
/// methods may be called at the same time (from a Ctrl-C handler, a terminal resize). Disposing the session closes
/// the connection, and the agent then kills whatever of the command is still running.
/// </summary>
public sealed class ExecSession : IAsyncDisposable
{
    private readonly AgentClient _client;
    private readonly bool _tty;

    internal ExecSession(AgentClient client, int pid, bool tty)
    {
        _client = client;
        Pid = pid;
        _tty = tty;
    }

    /// <summary>The process id in the guest.</summary>
    public int Pid { get; }

    /// <summary>After <see cref="RunAsync"/>: the signal that killed the process (its exit code is then 128 + it), else null.</summary>
    public int? ExitSignal { get; private set; }

    public async Task WriteStdinAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        while (!data.IsEmpty)
        {
            ReadOnlyMemory<byte> chunk = data[..Math.Min(data.Length, Frames.MaxData)];
            await _client.Writer.WriteAsync(FrameType.Stdin, chunk, ct).ConfigureAwait(false);
            data = data[chunk.Length..];
        }
    }

    /// <summary>End of input: the stdin pipe closes; on a TTY the terminal's end-of-file character (^D) is typed.</summary>
    public Task CloseStdinAsync(CancellationToken ct) =>
        _client.Writer.WriteAsync(FrameType.StdinClose, ReadOnlyMemory<byte>.Empty, ct).AsTask();

    /// <summary>Sends signal <paramref name="signo"/> to the process (with a TTY: to its foreground process group).</summary>
    public Task SignalAsync(int signo, CancellationToken ct) =>
        _client.Writer.WriteJsonAsync(FrameType.Signal, new SignalMessage(signo), AgentJsonContext.Default.SignalMessage, ct).AsTask();

    /// <summary>Sets the terminal size (TIOCSWINSZ; the process gets SIGWINCH). Ignored without a TTY.</summary>
    public Task ResizeAsync(ushort rows, ushort cols, CancellationToken ct) =>
        _client.Writer.WriteJsonAsync(FrameType.Resize, new ResizeMessage(rows, cols), AgentJsonContext.Default.ResizeMessage, ct).AsTask();

    /// <summary>
    /// Copies <paramref name="stdin"/> to the process until its end (then closes the process's stdin; a null stdin is
    /// closed at once, except on a TTY, which stays open), writes the process's output to <paramref name="stdout"/>
    /// and <paramref name="stderr"/>, and returns the exit code once the agent reports it (after all output).
    /// </summary>
    /// <exception cref="AgentProtocolException">The connection ended or broke before Exit.</exception>
    public async Task<int> RunAsync(Stream? stdin, Stream stdout, Stream stderr, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(stdout);
        ArgumentNullException.ThrowIfNull(stderr);
        using var stopInput = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Task input = stdin is not null ? PumpStdinAsync(stdin, stopInput.Token)
            : _tty ? Task.CompletedTask : CloseStdinAsync(stopInput.Token);
        try
        {
            while (true)
            {
                Frame? frame = await _client.Reader.ReadAsync(ct).ConfigureAwait(false);
                switch (frame)
                {
                    case { Type: FrameType.Stdout } output:
                        await stdout.WriteAsync(output.Payload, ct).ConfigureAwait(false);
                        await stdout.FlushAsync(ct).ConfigureAwait(false);
                        break;
                    case { Type: FrameType.Stderr } error:
                        await stderr.WriteAsync(error.Payload, ct).ConfigureAwait(false);
                        await stderr.FlushAsync(ct).ConfigureAwait(false);
                        break;
                    case { Type: FrameType.Exit } exit:
                        ExitMessage message = Messages.Decode(exit, AgentJsonContext.Default.ExitMessage);
                        ExitSignal = message.Signal;
                        return message.Code;
                    case { Type: FrameType.Error } refusal:
                        throw new AgentProtocolException($"agent: {Messages.DecodeError(refusal).Message}");
                    default:
                        throw Messages.Unexpected(frame, "Stdout, Stderr or Exit");
                }
            }
        }
        finally
        {
            // The command has ended (or the connection has): input still being read is of no use now. It is not awaited:
            // a read from a terminal does not observe cancellation, and `kit shell` would wait for one more key.
            await stopInput.CancelAsync().ConfigureAwait(false);
            _ = input.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        }
    }

    private async Task PumpStdinAsync(Stream stdin, CancellationToken ct)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(Frames.MaxData);
        try
        {
            while (true)
            {
                int n = await stdin.ReadAsync(buffer.AsMemory(0, Frames.MaxData), ct).ConfigureAwait(false);
                if (n == 0)
                {
                    break;
                }
                await _client.Writer.WriteAsync(FrameType.Stdin, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
            }
            await CloseStdinAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    public ValueTask DisposeAsync() => _client.DisposeAsync();
}
