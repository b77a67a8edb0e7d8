using System.Runtime.InteropServices;
using Kit.Linux;

namespace Kit.Cli.Commands;

/// <summary>
/// SIGTERM (timeout, systemd, docker stop), SIGHUP and SIGINT while kit supervises a child command. Without handlers
/// .NET ends the process at once (exit 143 for SIGTERM) and no finally block runs, so `kit net run` left its namespace,
/// <c>/etc/netns/kit-PID</c>, an unflushed pcap and the command itself behind. Here a signal is cancelled (kit keeps
/// running), passed on to the child, and reported to the waiting thread, which gives the child <see cref="Grace"/> to
/// exit, kills it, and cleans up as after a normal exit.
/// </summary>
internal sealed class ChildSignals : IDisposable
{
    /// <summary>How long the child has to exit after the signal is passed on, before SIGKILL.</summary>
    public static readonly TimeSpan Grace = TimeSpan.FromSeconds(3);

    private readonly PosixSignalRegistration[] _registrations;
    private readonly TaskCompletionSource<PosixSignal> _received = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _gate = new();
    private readonly bool _terminal;
    private int _childPid;

    /// <param name="terminal">
    /// stdin is a terminal: a Ctrl-C there reaches the child directly (the terminal signals its whole foreground process
    /// group), so SIGINT is left to the child, as a shell does with its foreground job; an interactive shell that
    /// ignores Ctrl-C keeps running.
    /// </param>
    public ChildSignals(bool terminal)
    {
        _terminal = terminal;
        _registrations =
        [
            PosixSignalRegistration.Create(PosixSignal.SIGTERM, Handle),
            PosixSignalRegistration.Create(PosixSignal.SIGHUP, Handle),
            PosixSignalRegistration.Create(PosixSignal.SIGINT, Handle),
        ];
    }

    /// <summary>Completes with the first signal to stop for.</summary>
    public Task<PosixSignal> Received => _received.Task;

    /// <summary>The exit code for a stop by <paramref name="signal"/>: 128 + its number, as a shell reports it.</summary>
    public static int ExitCode(PosixSignal signal) => 128 + ProcessSignal.Number(signal);

    /// <summary>The child is running: a signal that came before it is passed on now.</summary>
    public void ChildStarted(int pid)
    {
        lock (_gate)
        {
            _childPid = pid;
            if (_received.Task.IsCompleted)
            {
                ProcessSignal.Send(pid, _received.Task.Result);
            }
        }
    }

    private void Handle(PosixSignalContext context)
    {
        context.Cancel = true;
        if (context.Signal == PosixSignal.SIGINT && _terminal)
        {
            return;
        }
        lock (_gate)
        {
            _received.TrySetResult(context.Signal);
            // Every signal is passed on (a second SIGTERM too); before the child starts, ChildStarted does it.
            ProcessSignal.Send(_childPid, context.Signal);
        }
    }

    public void Dispose()
    {
        foreach (PosixSignalRegistration r in _registrations)
        {
            r.Dispose();
        }
    }
}
