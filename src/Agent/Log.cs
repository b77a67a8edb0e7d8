namespace Kit.Agent;

/// <summary>
/// One line per connection or failure on stderr, which busybox init routes to the console. Deliberately not
/// Microsoft.Extensions.Logging: the agent's whole output is these lines, and the guest binary stays small.
/// </summary>
internal static class Log
{
    private static readonly Lock s_lock = new();

    public static void Line(string message)
    {
        lock (s_lock)
        {
            Console.Error.WriteLine($"kit-agent: {message}");
        }
    }
}
