namespace Kit.Cli.Machines;

/// <summary>
/// The guest agent the image is built with: <c>$KIT_AGENT</c>, else <c>kit-agent</c> beside kit (published together:
/// `dotnet publish src/Kit` publishes the NativeAOT agent into the same directory).
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
        return File.Exists(beside)
            ? beside
            : throw new CliException($"the guest agent is missing: {beside} (build kit with ./kit, which publishes it, or set KIT_AGENT)");
    }
}
