using System.Diagnostics;

namespace Kit.Testing;

/// <summary>
/// Runs the built `kit` CLI as a separate process, as a user or script would. Test projects that reference
/// src/Kit get the kit apphost copied beside them.
/// </summary>
public static class KitCli
{
    /// <summary>The kit apphost beside the running test assembly.</summary>
    public static string ExecutablePath => Path.Combine(AppContext.BaseDirectory, "kit");

    /// <summary>Start information for `kit ARGS...`, to be customised (environment, redirection) by the caller.</summary>
    public static ProcessStartInfo StartInfo(params string[] args)
    {
        if (!File.Exists(ExecutablePath))
        {
            throw new FileNotFoundException($"kit not found beside the tests at {ExecutablePath}; does the test project reference src/Kit?");
        }
        var start = new ProcessStartInfo(ExecutablePath)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            start.ArgumentList.Add(a);
        }
        return start;
    }

    /// <summary>Runs `kit ARGS...` to completion (at most <paramref name="timeout"/>); returns the exit code and stdout+stderr.</summary>
    public static (int ExitCode, string Output) Run(string[] args, TimeSpan timeout)
    {
        using Process process = Process.Start(StartInfo(args)) ?? throw new InvalidOperationException("cannot start kit");
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"kit {string.Join(' ', args)} did not finish within {timeout}");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    /// <summary>Runs `kit ARGS...` with a one-minute limit.</summary>
    public static (int ExitCode, string Output) Run(params string[] args) => Run(args, TimeSpan.FromMinutes(1));
}
