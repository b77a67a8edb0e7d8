namespace Kit.Testing;

/// <summary>
/// Runs the built `kit` CLI as a separate process, as a user or script would. Test projects that reference
/// src/Kit get the kit apphost copied beside them.
/// </summary>
public static class KitCli
{
    /// <summary>The kit apphost beside the running test assembly.</summary>
    public static string ExecutablePath
    {
        get
        {
            string path = Path.Combine(AppContext.BaseDirectory, "kit");
            return File.Exists(path)
                ? path
                : throw new FileNotFoundException($"kit not found beside the tests at {path}; does the test project reference src/Kit?");
        }
    }

    /// <summary>Runs `kit ARGS...` to completion (one minute at most).</summary>
    public static ProcessResult Run(params string[] args) => ProcessRunner.Run(ExecutablePath, args);

    /// <summary>Starts a long-running `kit ARGS...` (a server); disposing the result kills it.</summary>
    public static RunningProcess Start(params string[] args) => ProcessRunner.Start(ExecutablePath, args);
}
