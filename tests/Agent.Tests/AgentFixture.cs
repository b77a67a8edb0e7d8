using System.Net.Sockets;
using Kit.Agent.Protocol;
using Kit.Testing;

[assembly: AssemblyFixture(typeof(Kit.Agent.Tests.AgentFixture))]

namespace Kit.Agent.Tests;

/// <summary>
/// The NativeAOT kit-agent, published once per test run (or KIT_AGENT_EXE, a binary built beforehand), and one agent
/// serving a Unix socket in a private directory that the tests share; it never powers anything off
/// (--dry-run-shutdown) and ignores the host's input devices (--no-power-button).
/// </summary>
public sealed class AgentFixture : IAsyncLifetime
{
    private DirectoryInfo? _publishDir;
    private RunningAgent? _shared;

    /// <summary>The agent executable under test.</summary>
    public string Executable { get; private set; } = "";

    /// <summary>The shared agent.</summary>
    public RunningAgent Agent => _shared ?? throw new InvalidOperationException("fixture not initialized");

    public async ValueTask InitializeAsync()
    {
        string? prebuilt = Environment.GetEnvironmentVariable("KIT_AGENT_EXE");
        if (!string.IsNullOrEmpty(prebuilt))
        {
            Executable = prebuilt;
        }
        else
        {
            _publishDir = Directory.CreateTempSubdirectory("kit-agent-publish-");
            string project = Path.Combine(RepoPaths.Root, "src", "Agent", "Agent.csproj");
            // A build tree of its own (kept between runs, so publishing is incremental): the publish must not rewrite
            // artifacts/bin/AgentProtocol, which this very test process has loaded.
            string artifacts = Path.Combine(RepoPaths.Root, "artifacts", "agent-tests-publish");
            ProcessResult publish = await ProcessRunner.RunAsync("dotnet",
                ["publish", project, "-r", "linux-x64", "-c", "Release", "-o", _publishDir.FullName, $"-p:ArtifactsPath={artifacts}",
                 "-nologo", "-v", "q", "-clp:ErrorsOnly"],
                timeout: TimeSpan.FromMinutes(5), standardInput: null, environment: null, workingDirectory: RepoPaths.Root,
                cancellationToken: CancellationToken.None);
            if (publish.ExitCode != 0 || publish.TimedOut)
            {
                throw new InvalidOperationException($"publishing the NativeAOT kit-agent failed (exit {publish.ExitCode}):\n{Text.Tail(publish.Output, 4000)}");
            }
            Executable = Path.Combine(_publishDir.FullName, "kit-agent");
        }
        if (!File.Exists(Executable))
        {
            throw new InvalidOperationException($"no kit-agent at {Executable}");
        }
        _shared = await RunningAgent.StartAsync(Executable);
    }

    public ValueTask DisposeAsync()
    {
        _shared?.Dispose();
        try
        {
            _publishDir?.Delete(recursive: true);
        }
        catch (IOException)
        {
        }
        return ValueTask.CompletedTask;
    }
}

/// <summary>A kit-agent process listening on a Unix socket in its own 0700 temporary directory.</summary>
public sealed class RunningAgent : IDisposable
{
    private readonly DirectoryInfo _dir;

    private RunningAgent(DirectoryInfo dir, RunningProcess process, string socketPath)
    {
        _dir = dir;
        Process = process;
        SocketPath = socketPath;
    }

    public RunningProcess Process { get; }

    public string SocketPath { get; }

    /// <summary>Starts an agent; <paramref name="options"/> replace --no-power-button (the shared agent ignores this host's input devices).</summary>
    public static async Task<RunningAgent> StartAsync(string executable, IReadOnlyList<string>? options = null)
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-agent-"); // 0700 on Unix
        string socket = Path.Combine(dir.FullName, "agent.sock");
        RunningProcess process = ProcessRunner.Start(executable,
            ["--listen", $"unix:{socket}", "--dry-run-shutdown", .. options ?? ["--no-power-button"]]);
        try
        {
            await process.WaitForLineAsync(l => l.Contains("listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        }
        catch
        {
            process.Dispose();
            throw;
        }
        return new RunningAgent(dir, process, socket);
    }

    /// <summary>A new connected socket to the agent (raw: no Hello yet).</summary>
    public async Task<Socket> ConnectRawAsync(CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(SocketPath), ct);
            return socket;
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    /// <summary>A client after Hello, on a new connection.</summary>
    public async Task<AgentClient> ConnectAsync(CancellationToken ct)
    {
        Socket socket = await ConnectRawAsync(ct);
        return await AgentClient.ConnectAsync(new NetworkStream(socket, ownsSocket: true), ct);
    }

    public void Dispose()
    {
        Process.Dispose();
        try
        {
            _dir.Delete(recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
