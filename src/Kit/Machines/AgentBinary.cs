namespace Kit.Cli.Machines;

/// <summary>
/// The guest agent machines boot with: <c>$KIT_AGENT</c>, else <c>kit-agent</c> beside kit (published together:
/// `dotnet publish src/Kit` publishes the NativeAOT agent into the same directory), else <c>../lib/kit/kit-agent</c>
/// (the Debian package's /usr/bin/kit and /usr/lib/kit/kit-agent).
/// </summary>
internal static class AgentBinary
{
    public static string Find()
    {
        if (Environment.GetEnvironmentVariable("KIT_AGENT") is { Length: > 0 } env)
        {
            return File.Exists(env) ? Path.GetFullPath(env) : throw new CliException($"KIT_AGENT={env}: no such file");
        }
        string beside = Path.Combine(AppContext.BaseDirectory, "kit-agent");
        string packaged = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "lib", "kit", "kit-agent"));
        return File.Exists(beside) ? beside
            : File.Exists(packaged) ? packaged
            : throw new CliException($"the guest agent is missing: {beside} (build kit with ./kit, which publishes it, or set KIT_AGENT)");
    }
}
