using System.Net;
using System.Runtime.CompilerServices;
using Kit.NineP.Server;

namespace Kit.DataKit.Tests;

/// <summary>
/// Lets a test start a DataKit server in a separate process (so it can be killed with SIGKILL): when this test
/// executable starts with KIT_DATAKIT_CHILD=gitdir, it serves on a free port, prints it, and never returns.
/// </summary>
internal static class ChildServer
{
    public const string Variable = "KIT_DATAKIT_CHILD";

#pragma warning disable CA2255 // Deliberate: the test executable doubles as a server process for the crash tests.
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void MaybeServe()
    {
        string? git = Environment.GetEnvironmentVariable(Variable);
        if (string.IsNullOrEmpty(git))
        {
            return;
        }
        var server = new DataKitServer(git);
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var ep = (IPEndPoint)server.Listen(any!);
        Console.Out.WriteLine($"port {ep.Port}");
        Console.Out.Flush();
        Thread.Sleep(Timeout.Infinite);
    }
}
