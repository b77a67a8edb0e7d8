using System.Diagnostics;

namespace Kit.Testing;

public static partial class ProcessRunner
{
    /// <summary>
    /// Runs a program whose standard output is bytes, not lines (diodcat reading a binary file, say), and returns
    /// them unchanged. A run past <paramref name="timeout"/> (120 s by default) is killed and throws.
    /// </summary>
    public static async Task<(int Code, byte[] Stdout, string Stderr)> RunBinaryAsync(
        string fileName, IEnumerable<string> arguments, TimeSpan? timeout = null)
    {
        var start = new ProcessStartInfo(fileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        using Process process = Process.Start(start) ?? throw new InvalidOperationException($"cannot start {fileName}");
        using var stdout = new MemoryStream();
        Task copy = process.StandardOutput.BaseStream.CopyToAsync(stdout);
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        using var expired = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(120));
        try
        {
            await process.WaitForExitAsync(expired.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{fileName} {string.Join(' ', arguments)} timed out");
        }
        await copy.ConfigureAwait(false);
        return (process.ExitCode, stdout.ToArray(), await stderr.ConfigureAwait(false));
    }
}
