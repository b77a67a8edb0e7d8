using System.ComponentModel;
using System.Diagnostics;
using System.Text;

namespace Kit.Testing;

/// <summary>What a finished (or killed) child process left behind.</summary>
public sealed record ProcessResult(
    string Command, int ExitCode, string StandardOutput, string StandardError, TimeSpan Elapsed, bool TimedOut)
{
    /// <summary>Standard output followed by standard error, for failure messages.</summary>
    public string Output => StandardError.Length == 0 ? StandardOutput : StandardOutput + StandardError;

    /// <summary>Throws <see cref="ProcessFailedException"/> unless the process exited 0 within its timeout.</summary>
    public ProcessResult EnsureSuccess()
    {
        if (TimedOut || ExitCode != 0)
        {
            throw new ProcessFailedException(this);
        }
        return this;
    }

    public override string ToString() =>
        $"{Command}: {(TimedOut ? "timed out" : $"exit {ExitCode}")} after {Elapsed.TotalSeconds:F1} s";
}

/// <summary>A child process failed; the message carries its command, exit code and the tail of its output.</summary>
public sealed class ProcessFailedException(ProcessResult result)
    : Exception($"{result}\n--- output (tail) ---\n{Text.Tail(result.Output, 4000)}")
{
    public ProcessResult Result { get; } = result;
}

/// <summary>
/// Runs external programs for tests: captures stdout and stderr, enforces a timeout and kills the whole process
/// tree when it expires or the caller cancels, so no test leaves a QEMU or iperf3 behind.
/// </summary>
public static partial class ProcessRunner
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Runs <paramref name="fileName"/> with <paramref name="arguments"/> (no shell) and waits for it.</summary>
    /// <param name="standardInput">Text written to stdin, which is then closed; null closes stdin at once.</param>
    /// <param name="environment">Variables to set (a null value removes the variable).</param>
    public static async Task<ProcessResult> RunAsync(
        string fileName,
        IEnumerable<string> arguments,
        TimeSpan? timeout = null,
        string? standardInput = null,
        IReadOnlyDictionary<string, string?>? environment = null,
        string? workingDirectory = null,
        CancellationToken cancellationToken = default)
    {
        using RunningProcess process = Start(fileName, arguments, environment, workingDirectory);
        try
        {
            if (standardInput is not null)
            {
                await process.Process.StandardInput.WriteAsync(standardInput).ConfigureAwait(false);
            }
            process.Process.StandardInput.Close();
        }
        catch (IOException)
        {
            // The program exited without reading its input; its exit code tells the story.
        }
        return await process.WaitAsync(timeout ?? DefaultTimeout, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Runs <c>sh -c <paramref name="script"/></c>.</summary>
    public static Task<ProcessResult> ShellAsync(
        string script, TimeSpan? timeout = null, CancellationToken cancellationToken = default) =>
        RunAsync("/bin/sh", ["-c", script], timeout, cancellationToken: cancellationToken);

    /// <summary>Synchronous <see cref="RunAsync"/> for places that cannot await (constructors, Dispose).</summary>
    public static ProcessResult Run(string fileName, IEnumerable<string> arguments, TimeSpan? timeout = null) =>
        RunAsync(fileName, arguments, timeout).GetAwaiter().GetResult();

    /// <summary>
    /// Starts a long-running process with captured output (stdin stays open for the caller). Dispose kills it.
    /// </summary>
    public static RunningProcess Start(
        string fileName,
        IEnumerable<string> arguments,
        IReadOnlyDictionary<string, string?>? environment = null,
        string? workingDirectory = null)
    {
        var start = new ProcessStartInfo(fileName)
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = workingDirectory ?? "",
        };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        if (environment is not null)
        {
            foreach ((string key, string? value) in environment)
            {
                if (value is null)
                {
                    start.Environment.Remove(key);
                }
                else
                {
                    start.Environment[key] = value;
                }
            }
        }
        return new RunningProcess(start);
    }
}

/// <summary>
/// A started child process whose output is collected as it arrives (line by line, so a test can wait for a
/// line). Disposing kills the process tree if it is still running.
/// </summary>
public sealed class RunningProcess : IDisposable
{
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly object _gate = new();
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Done)> _waiters = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly TaskCompletionSource _stdoutClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stderrClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private bool _timedOut;

    internal RunningProcess(ProcessStartInfo start)
    {
        Command = start.FileName + (start.ArgumentList.Count == 0 ? "" : " " + string.Join(' ', start.ArgumentList));
        Process = new Process { StartInfo = start };
        Process.OutputDataReceived += (_, e) => OnLine(e.Data, _stdout, _stdoutClosed);
        Process.ErrorDataReceived += (_, e) => OnLine(e.Data, _stderr, _stderrClosed);
        try
        {
            Process.Start();
        }
        catch (Win32Exception e)
        {
            Process.Dispose();
            throw new InvalidOperationException($"cannot start {start.FileName}: {e.Message}", e);
        }
        Process.BeginOutputReadLine();
        Process.BeginErrorReadLine();
    }

    public Process Process { get; }

    public string Command { get; }

    public int Id => Process.Id;

    /// <summary>Standard output received so far (terminal escapes and control characters removed, see <see cref="Text.Printable"/>).</summary>
    public string StandardOutput
    {
        get { lock (_gate) { return _stdout.ToString(); } }
    }

    /// <summary>Standard error received so far.</summary>
    public string StandardError
    {
        get { lock (_gate) { return _stderr.ToString(); } }
    }

    /// <summary>
    /// Completes with the first output line (stdout or stderr, seen so far or later) that satisfies
    /// <paramref name="match"/>; fails if the process exits first or the timeout passes.
    /// </summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        var done = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            foreach (string line in (_stdout.ToString() + _stderr.ToString()).Split('\n'))
            {
                if (match(line))
                {
                    return line;
                }
            }
            _waiters.Add((match, done));
        }
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Task exited = Process.WaitForExitAsync(stop.Token);
        Task first = await Task.WhenAny(done.Task, exited, Task.Delay(timeout, stop.Token)).ConfigureAwait(false);
        await stop.CancelAsync().ConfigureAwait(false); // ends the losing waits now, not when the timeout expires
        lock (_gate)
        {
            _waiters.RemoveAll(w => w.Done == done);
        }
        if (first == done.Task)
        {
            return await done.Task.ConfigureAwait(false);
        }
        cancellationToken.ThrowIfCancellationRequested();
        string why = first == exited && first.IsCompletedSuccessfully
            ? $"exited ({Process.ExitCode})"
            : $"did not print it within {timeout.TotalSeconds:F0} s";
        throw new TimeoutException(
            $"{Command}: waited for an output line but the process {why}\n--- output (tail) ---\n{Text.Tail(StandardOutput + StandardError, 4000)}");
    }

    /// <summary>Waits for exit; on timeout or cancellation kills the process tree and reports it.</summary>
    public async Task<ProcessResult> WaitAsync(TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            await Process.WaitForExitAsync(deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            _timedOut = !cancellationToken.IsCancellationRequested;
            Kill();
            await Process.WaitForExitAsync(CancellationToken.None).ConfigureAwait(false);
            if (!_timedOut)
            {
                throw;
            }
        }
        // Exit is signalled before the last output lines are delivered; wait for both pipes to close
        // (bounded: a grandchild that inherited the pipe could hold it open).
        await Task.WhenAny(Task.WhenAll(_stdoutClosed.Task, _stderrClosed.Task), Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
        return Result();
    }

    /// <summary>The result so far (exit code -1 while still running).</summary>
    public ProcessResult Result() => new(
        Command,
        Process.HasExited ? Process.ExitCode : -1,
        StandardOutput,
        StandardError,
        _clock.Elapsed,
        _timedOut);

    /// <summary>Kills the process and all its descendants (no-op if it has exited).</summary>
    public void Kill()
    {
        try
        {
            if (!Process.HasExited)
            {
                Process.Kill(entireProcessTree: true);
            }
        }
        catch (InvalidOperationException)
        {
            // Exited between the check and the kill.
        }
    }

    public void Dispose()
    {
        Kill();
        try
        {
            Process.WaitForExit(5000);
        }
        catch (InvalidOperationException)
        {
        }
        Process.Dispose();
    }

    private void OnLine(string? line, StringBuilder sink, TaskCompletionSource closed)
    {
        if (line is null)
        {
            closed.TrySetResult();
            return;
        }
        line = Text.Printable(line);
        List<TaskCompletionSource<string>>? hit = null;
        lock (_gate)
        {
            sink.Append(line).Append('\n');
            foreach ((Func<string, bool> match, TaskCompletionSource<string> done) in _waiters)
            {
                if (match(line))
                {
                    (hit ??= []).Add(done);
                }
            }
        }
        if (hit is not null)
        {
            foreach (TaskCompletionSource<string> done in hit)
            {
                done.TrySetResult(line);
            }
        }
    }
}
