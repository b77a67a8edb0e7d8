using System.Net.Sockets;
using Kit.Agent;
using Kit.Agent.Protocol;

// kit-agent: the guest agent. Started by the guest's init as a respawned root service; serves the host over vsock.
string listen = $"vsock:{AgentPort.Vsock}";
bool powerButton = true;
string inputDirectory = "/dev/input";
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
        case "--input-dir" when i + 1 < args.Length:
            // For tests: where the power button's event devices are looked for (default /dev/input).
            inputDirectory = args[++i];
            break;
        case "--help" or "-h":
            Console.WriteLine("usage: kit-agent [--listen vsock:PORT|unix:PATH] [--no-power-button] [--input-dir DIR] [--dry-run-shutdown]");
            return 0;
        default:
            Console.Error.WriteLine($"kit-agent: unknown argument {args[i]} (see --help)");
            return 2;
    }
}

Listen listener;
try
{
    listener = Listen.Open(listen);
}
catch (Exception e) when (e is ArgumentException or IOException)
{
    Console.Error.WriteLine($"kit-agent: cannot listen on {listen}: {e.Message}");
    return 1;
}
if (powerButton)
{
    PowerButton.Start(inputDirectory);
}
Log.Line($"listening on {listen}, protocol {AgentProtocolVersion.Current}");

// The main thread only accepts; each connection is served concurrently on the thread pool.
for (long id = 1; ; id++)
{
    Socket socket = listener.Accept();
    long connection = id;
    _ = Task.Run(() => Connection.HandleAsync(socket, connection, CancellationToken.None));
}
