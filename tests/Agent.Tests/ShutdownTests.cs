using Kit.Agent.Protocol;
using Kit.Testing;

namespace Kit.Agent.Tests;

/// <summary>Shutdown against an agent of its own, in dry-run mode: it answers Ok and exits instead of powering off.</summary>
public sealed class ShutdownTests(AgentFixture fixture)
{
    [Fact]
    public async Task Shutdown_is_acknowledged_then_carried_out()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using RunningAgent agent = await RunningAgent.StartAsync(fixture.Executable);
        await using (AgentClient client = await agent.ConnectAsync(timeout.Token))
        {
            await client.ShutdownAsync(timeout.Token);
        }
        ProcessResult result = await agent.Process.WaitAsync(TimeSpan.FromSeconds(10), timeout.Token);
        Assert.False(result.TimedOut);
        Assert.Equal(0, result.ExitCode);
        Assert.Contains("shutting down: Shutdown request from the host", result.StandardError, StringComparison.Ordinal);
    }
}

/// <summary>The power button: a KEY_POWER press on an event device (here a FIFO the test writes) shuts down.</summary>
public sealed class PowerButtonTests(AgentFixture fixture)
{
    [Fact]
    public async Task A_power_key_press_on_an_input_device_shuts_down()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        DirectoryInfo input = Directory.CreateTempSubdirectory("kit-agent-input-");
        try
        {
            string device = Path.Combine(input.FullName, "event0");
            ProcessRunner.Run("mkfifo", [device]).EnsureSuccess();
            using RunningAgent agent = await RunningAgent.StartAsync(fixture.Executable, ["--input-dir", input.FullName]);
            // Opening a FIFO for writing waits for its reader: the agent has found the device once this returns.
            await using (var events = new FileStream(device, FileMode.Open, FileAccess.Write, FileShare.ReadWrite, bufferSize: 0))
            {
                byte[] keyboard = new byte[24 * 3];
                Event(keyboard.AsSpan(0, 24), type: 1, code: 30, value: 1); // KEY_A pressed: ignored
                Event(keyboard.AsSpan(24, 24), type: 1, code: 116, value: 0); // KEY_POWER released: ignored
                await events.WriteAsync(keyboard, cancel);
                await Task.Delay(300, cancel);
                Assert.False(agent.Process.Process.HasExited);
                byte[] power = new byte[24];
                Event(power, type: 1, code: 116, value: 1);
                await events.WriteAsync(power, cancel);
            }
            ProcessResult result = await agent.Process.WaitAsync(TimeSpan.FromSeconds(20), cancel);
            Assert.False(result.TimedOut);
            Assert.Contains($"shutting down: power button ({device})", result.StandardError, StringComparison.Ordinal);
        }
        finally
        {
            input.Delete(recursive: true);
        }
    }

    // struct input_event on LP64: struct timeval (16 bytes), u16 type, u16 code, s32 value.
    private static void Event(Span<byte> at, ushort type, ushort code, int value)
    {
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(at[16..], type);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt16LittleEndian(at[18..], code);
        System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(at[20..], value);
    }
}

/// <summary>The agent's own listening path for the guest: AF_VSOCK, which .NET's Socket class refuses on Linux.</summary>
public sealed class VsockListenTests(AgentFixture fixture)
{
    [Fact]
    public async Task The_agent_listens_on_vsock_where_the_kernel_has_it()
    {
        int port = Random.Shared.Next(20_000, 60_000);
        using RunningProcess agent = ProcessRunner.Start(fixture.Executable, ["--listen", $"vsock:{port}", "--no-power-button", "--dry-run-shutdown"]);
        string line = await agent.WaitForLineAsync(l => l.Contains("listen", StringComparison.Ordinal), TimeSpan.FromSeconds(20),
            TestContext.Current.CancellationToken);
        if (line.Contains("Address family not supported", StringComparison.Ordinal))
        {
            Assert.Skip($"this kernel has no AF_VSOCK: {line}");
        }
        Assert.Contains($"listening on vsock:{port}", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_vsock_descriptor_wrapped_in_a_Socket_does_socket_io()
    {
        // The guest path: accept4 gives a bare AF_VSOCK descriptor that .NET's Socket wraps for its async I/O. Without a
        // vsock peer here, an unconnected socket shows the wrapping works: I/O fails as the kernel says (not connected),
        // not with a .NET refusal of the address family.
        int fd = Native.Socket(Native.AF_VSOCK, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            Assert.Skip("this kernel has no AF_VSOCK");
        }
        using var socket = new System.Net.Sockets.Socket(new System.Net.Sockets.SafeSocketHandle(fd, ownsHandle: true));
        await using var stream = new SocketStream(socket);
        var e = await Assert.ThrowsAsync<IOException>(async () => _ = await stream.ReadAsync(new byte[1], TestContext.Current.CancellationToken));
        Assert.Equal(System.Net.Sockets.SocketError.NotConnected, ((System.Net.Sockets.SocketException)e.InnerException!).SocketErrorCode);
    }
}
