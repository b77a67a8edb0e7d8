using System.Buffers;
using System.Net.Sockets;
using System.Threading.Channels;
using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>
/// Serves an Exec request: starts the child, pumps its output to the host on dedicated threads (blocking reads on
/// pipes and PTYs would otherwise hold thread-pool threads), feeds it the host's stdin through a bounded queue, and
/// sends Exit once the child has been reaped and its output has reached end-of-file. If the host goes away or breaks
/// the protocol first, the command's process group is killed: nothing is left running that nobody can see.
/// </summary>
internal sealed class ExecHandler
{
    // Stdin frames queued for the child: at most this many 64 KiB frames before the host's reads stop (backpressure).
    private const int StdinQueue = 16;

    private readonly FrameReader _reader;
    private readonly FrameWriter _writer;
    private readonly Channel<(byte[] Buffer, int Length)> _stdin =
        Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(StdinQueue) { SingleReader = true, SingleWriter = true });
    private readonly CancellationTokenSource _hostGone = new();
    private Child? _child;
    private int _killed;
    private volatile bool _stdinClosedByHost;

    private ExecHandler(FrameReader reader, FrameWriter writer)
    {
        _reader = reader;
        _writer = writer;
    }

    /// <summary>Runs the request to its end; returns the line to log.</summary>
    public static Task<string> RunAsync(Frame request, FrameReader reader, FrameWriter writer, CancellationToken ct) =>
        new ExecHandler(reader, writer).RunAsync(request, ct);

    private async Task<string> RunAsync(Frame request, CancellationToken ct)
    {
        ExecMessage exec = Messages.Decode(request, AgentJsonContext.Default.ExecMessage);
        if (Child.Validate(exec) is { } invalid)
        {
            throw new AgentProtocolException($"bad Exec request: {invalid}");
        }
        string command = string.Join(' ', exec.Argv);
        Child child;
        try
        {
            child = Child.Start(exec);
        }
        catch (Exception e) when (e is SpawnException or IOException)
        {
            // IOException: the agent's own resources (pipes, PTYs) ran out; the host hears it as a refusal (126).
            await _writer.WriteJsonAsync(FrameType.Error, new ErrorMessage(e.Message) { NotFound = e is SpawnException { NotFound: true } },
                AgentJsonContext.Default.ErrorMessage, ct).ConfigureAwait(false);
            return $"exec [{command}] refused: {e.Message}";
        }
        _child = child;
        try
        {
            await _writer.WriteJsonAsync(FrameType.Started, new StartedMessage(child.Pid), AgentJsonContext.Default.StartedMessage, ct)
                .ConfigureAwait(false);
        }
        catch
        {
            // Nobody will see this command: kill it and reap it (a zombie otherwise), and free its descriptors.
            HostGone();
            _ = OnThread(() =>
            {
                _ = Native.WaitForExit(child.Pid);
                foreach (int fd in (ReadOnlySpan<int>)[child.Input, child.Output, child.Error])
                {
                    if (fd >= 0)
                    {
                        _ = Native.Close(fd);
                    }
                }
            }, "reap");
            throw;
        }

        Task<int> exited = OnThread(() => Native.WaitForExit(child.Pid), "wait");
        Task stdout = OnThread(() => Pump(child.Output, FrameType.Stdout), "stdout");
        Task stderr = child.Error >= 0 ? OnThread(() => Pump(child.Error, FrameType.Stderr), "stderr") : Task.CompletedTask;
        _ = OnThread(FeedStdin, "stdin");

        using var stopControl = CancellationTokenSource.CreateLinkedTokenSource(ct);
        Task<string?> control = ControlAsync(child, stopControl.Token);
        string? broken = null;
        try
        {
            await Task.WhenAll(exited, stdout, stderr).WaitAsync(_hostGone.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (_hostGone.IsCancellationRequested)
        {
            // The host is gone: output nobody reads need not reach its end (a daemon may hold the pipe for ever).
            await exited.ConfigureAwait(false);
        }

        (int code, int? signal) = ExitCode(await exited.ConfigureAwait(false));
        if (!_hostGone.IsCancellationRequested)
        {
            try
            {
                await _writer.WriteJsonAsync(FrameType.Exit, new ExitMessage(code) { Signal = signal },
                    AgentJsonContext.Default.ExitMessage, ct).ConfigureAwait(false);
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                broken = "host gone before Exit";
            }
        }
        await stopControl.CancelAsync().ConfigureAwait(false);
        broken = await control.ConfigureAwait(false) ?? broken;
        _stdin.Writer.TryComplete();
        // The output descriptors close only once their pumps have stopped reading them (at once, unless the host left
        // while a daemon holds the output open): a descriptor closed under a reader could be reused by another
        // connection and read by the wrong pump. Resize and Signal use the master too, but the control loop is done.
        _ = Task.WhenAll(stdout, stderr).ContinueWith(pumped =>
        {
            _ = Native.Close(child.Output);
            if (child.Error >= 0)
            {
                _ = Native.Close(child.Error);
            }
        }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        string ending = signal is { } s ? $"killed by signal {s} ({code})" : $"exit {code}";
        return $"exec [{command}] pid {child.Pid}{(child.Tty ? " tty" : "")}: {ending}{(broken is null ? "" : $"; {broken}")}";
    }

    /// <summary>
    /// The host's frames while the command runs. Returns null when stopped after Exit, or what went wrong (the host
    /// closed or broke the protocol, in which case the command has been killed).
    /// </summary>
    private async Task<string?> ControlAsync(Child child, CancellationToken ct)
    {
        bool stdinClosed = false;
        try
        {
            while (true)
            {
                Frame? frame = await _reader.ReadAsync(ct).ConfigureAwait(false);
                switch (frame)
                {
                    case null:
                        HostGone();
                        return "host closed the connection before Exit";
                    case { Type: FrameType.Stdin } data when !stdinClosed:
                        byte[] buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, data.Payload.Length));
                        data.Payload.CopyTo(buffer);
                        await _stdin.Writer.WriteAsync((buffer, data.Payload.Length), ct).ConfigureAwait(false);
                        break;
                    case { Type: FrameType.StdinClose } when !stdinClosed:
                        stdinClosed = true;
                        _stdinClosedByHost = true;
                        _stdin.Writer.TryComplete();
                        break;
                    case { Type: FrameType.Signal } signal:
                        Signal(child, Messages.Decode(signal, AgentJsonContext.Default.SignalMessage).Signo);
                        break;
                    case { Type: FrameType.Resize } resize:
                        ResizeMessage size = Messages.Decode(resize, AgentJsonContext.Default.ResizeMessage);
                        if (child.Tty && size.Rows > 0 && size.Cols > 0)
                        {
                            _ = Native.SetWindowSize(child.Output, size.Rows, size.Cols);
                        }
                        break;
                    default:
                        throw new AgentProtocolException($"unexpected {frame.Value.Type} frame during Exec"
                            + (stdinClosed ? " (stdin already closed)" : ""));
                }
            }
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            return null;
        }
        catch (AgentProtocolException e)
        {
            HostGone();
            await TrySendErrorAsync(e.Message).ConfigureAwait(false);
            return $"protocol error: {e.Message}";
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            HostGone();
            return $"connection lost: {e.Message}";
        }
    }

    private static void Signal(Child child, int signo)
    {
        if (signo is < 1 or > 64)
        {
            throw new AgentProtocolException($"bad signal number {signo}");
        }
        // On a terminal the signal goes where a typed ^C would: the foreground process group.
        int target = child.Pid;
        if (child.Tty)
        {
            int group = Native.ForegroundGroup(child.Output);
            target = -(group > 0 ? group : child.Pid);
        }
        _ = Native.Kill(target, signo);
    }

    /// <summary>The host will read nothing more: kill the command's process group (a session, with a TTY) once.</summary>
    private void HostGone()
    {
        _hostGone.Cancel();
        if (_child is { } child && Interlocked.Exchange(ref _killed, 1) == 0)
        {
            _ = Native.Kill(-child.Pid, Native.SIGKILL);
        }
    }

    private async Task TrySendErrorAsync(string message)
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            await _writer.WriteJsonAsync(FrameType.Error, new ErrorMessage(message), AgentJsonContext.Default.ErrorMessage, timeout.Token)
                .ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    /// <summary>Copies one of the child's outputs to the host as data frames, until end-of-file (EIO on a PTY).</summary>
    private void Pump(int fd, FrameType type)
    {
        byte[] buffer = new byte[Frames.MaxData];
        while (true)
        {
            int n = Native.ReadFd(fd, buffer);
            if (n <= 0)
            {
                return;
            }
            if (_hostGone.IsCancellationRequested)
            {
                continue; // keep draining so the child never blocks on a full pipe while it is being killed
            }
            try
            {
                _writer.Write(type, buffer.AsSpan(0, n));
            }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
            {
                HostGone();
            }
        }
    }

    /// <summary>Writes queued stdin to the child; at the end closes its stdin (with a TTY: types ^D, the terminal's EOF).</summary>
    private void FeedStdin()
    {
        Child child = _child!;
        bool broken = false;
        ChannelReader<(byte[] Buffer, int Length)> queue = _stdin.Reader;
        while (queue.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
        {
            while (queue.TryRead(out var item))
            {
                // After EPIPE (the child closed its stdin) the rest is dropped, as a pipe would.
                if (!broken && Native.WriteAll(child.Input, item.Buffer.AsSpan(0, item.Length)) < 0)
                {
                    broken = true;
                }
                ArrayPool<byte>.Shared.Return(item.Buffer);
            }
        }
        if (child.Tty && _stdinClosedByHost && !broken && !_hostGone.IsCancellationRequested)
        {
            _ = Native.WriteAll(child.Input, [0x04]);
        }
        _ = Native.Close(child.Input);
    }

    /// <summary>A wait status as a shell reports it: the exit status, or 128 + the signal that killed the process.</summary>
    internal static (int Code, int? Signal) ExitCode(int status)
    {
        if (status < 0)
        {
            return (255, null); // could not be waited for: reaped elsewhere
        }
        int signal = status & 0x7F;
        return signal == 0 ? ((status >> 8) & 0xFF, null) : (128 + signal, signal);
    }

    private static Task<T> OnThread<T>(Func<T> work, string name)
    {
        var done = new TaskCompletionSource<T>(TaskCreationOptions.RunContinuationsAsynchronously);
        var thread = new Thread(() =>
        {
            try
            {
                done.SetResult(work());
            }
            catch (Exception e)
            {
                done.SetException(e);
            }
        })
        { IsBackground = true, Name = $"exec-{name}" };
        thread.Start();
        return done.Task;
    }

    private static Task OnThread(Action work, string name) => OnThread(() =>
    {
        work();
        return true;
    }, name);
}
