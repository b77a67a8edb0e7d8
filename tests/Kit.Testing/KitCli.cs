namespace Kit.Testing;

/// <summary>
/// Runs the built `kit` CLI as a separate process, as a user or script would. Test projects that reference
/// src/Kit get the kit apphost copied beside them.
/// </summary>
public static class KitCli
{
    /// <summary>
    /// The kit under test: <c>$KIT_EXE</c> when set (an absolute path; ./test points it at the published NativeAOT
    /// artifacts/kit/kit so the end-to-end and nested tests run the shipping binary), else the kit apphost beside the
    /// running test assembly.
    /// </summary>
    public static string ExecutablePath
    {
        get
        {
            if (Environment.GetEnvironmentVariable("KIT_EXE") is { Length: > 0 } exe)
            {
                return Path.IsPathRooted(exe) && File.Exists(exe)
                    ? exe
                    : throw new FileNotFoundException($"KIT_EXE={exe} is not an absolute path to an existing kit binary");
            }
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
