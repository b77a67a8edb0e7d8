using System.Net.Sockets;
using Kit.Agent;
using Kit.Agent.Protocol;

// kit-agent: the guest agent. Started by the guest's init as a respawned root service; serves the host over vsock.
string listen = $"vsock:{AgentPort.Vsock}";
bool powerButton = true;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--listen" when i + 1 < args.Length:
            listen = args[++i];
            break;
        case "--dry-run-shutdown":
            // For tests on a real host: Shutdown and the power button end the agent instead of the machine.
            PowerOff.DryRun = true;
            break;
        case "--no-power-button":
            powerButton = false;
            break;
        case "--help" or "-h":
            Console.WriteLine("usage: kit-agent [--listen vsock:PORT|unix:PATH] [--no-power-button] [--dry-run-shutdown]");
            return 0;
        default:
            Console.Error.WriteLine($"kit-agent: unknown argument {args[i]} (see --help)");
            return 2;
    }
}

Socket listener;
try
{
    listener = Listen.Open(listen);
}
catch (Exception e) when (e is SocketException or ArgumentException or IOException or PlatformNotSupportedException)
{
    Console.Error.WriteLine($"kit-agent: cannot listen on {listen}: {e.Message}");
    return 1;
}
if (powerButton)
{
    PowerButton.Start();
}
Log.Line($"listening on {listen}, protocol {AgentProtocolVersion.Current}");

long connections = 0;
while (true)
{
    Socket socket;
    try
    {
        socket = await listener.AcceptAsync();
    }
    catch (SocketException e) when (e.SocketErrorCode is SocketError.ConnectionAborted or SocketError.Interrupted
                                        or SocketError.TooManyOpenSockets or SocketError.NoBufferSpaceAvailable)
    {
        // Out of descriptors or an aborted handshake: wait a little rather than spin, and keep serving.
        Log.Line($"accept: {e.Message}");
        await Task.Delay(100);
        continue;
    }
    long id = ++connections;
    _ = Task.Run(() => Connection.HandleAsync(socket, id, CancellationToken.None));
}
