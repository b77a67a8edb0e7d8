using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Kit.Agent.Protocol;

namespace Kit.Agent.Tests;

/// <summary>
/// A host that breaks the protocol gets an Error frame saying why and loses its connection; the agent keeps serving.
/// </summary>
public sealed class HostileTests(AgentFixture fixture)
{
    private static readonly byte[] GoodHello = Frame(FrameType.Hello, """{"version":1}""");

    public static TheoryData<string, byte[], string> Cases() => new()
    {
        { "oversize length", [0x01, 0x00, 0x10, 0x00, 0x01], "exceeds" },
        { "huge length", [0xFF, 0xFF, 0xFF, 0xFF], "exceeds" },
        { "zero length", [0, 0, 0, 0], "length 0" },
        { "garbage type", [0x01, 0, 0, 0, 0x99], "unknown frame type 0x99" },
        { "request before Hello", Frame(FrameType.Exec, """{"argv":["true"]}"""), "expected Hello first" },
        { "wrong version", Frame(FrameType.Hello, """{"version":99}"""), "version 99 is not supported" },
        { "malformed Hello", Frame(FrameType.Hello, "{not json"), "malformed Hello" },
        { "Stdin before Exec", [.. GoodHello, .. Frame(FrameType.Stdin, "x")], "expected a request" },
        { "empty argv", [.. GoodHello, .. Frame(FrameType.Exec, """{"argv":[]}""")], "empty argv" },
        { "oversize Stdin", [.. GoodHello, .. Header(Frames.MaxData + 2, FrameType.Stdin)], "data bound" },
        { "payload on Shutdown", [.. GoodHello, .. Frame(FrameType.Shutdown, "x")], "unexpected bytes" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Bad_input_gets_a_clear_error_and_the_agent_keeps_serving(string name, byte[] input, string reason)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using (Socket socket = await fixture.Agent.ConnectRawAsync(timeout.Token))
        await using (var stream = new NetworkStream(socket, ownsSocket: false))
        {
            await stream.WriteAsync(input, timeout.Token);
            socket.Shutdown(SocketShutdown.Send);
            using var reader = new FrameReader(stream);
            Frame? frame = await reader.ReadAsync(timeout.Token);
            if (frame is { Type: FrameType.Hello })
            {
                frame = await reader.ReadAsync(timeout.Token); // the agent answered the good Hello first
            }
            Assert.True(frame is { Type: FrameType.Error }, $"{name}: expected an Error frame, got {frame?.Type.ToString() ?? "end of stream"}");
            string message = Encoding.UTF8.GetString(frame!.Value.Payload.Span);
            Assert.Contains(reason, message, StringComparison.Ordinal);
            Assert.Null(await reader.ReadAsync(timeout.Token)); // and the connection is closed
        }
        await AssertStillServesAsync(timeout.Token);
    }

    [Fact]
    public async Task A_peer_that_vanishes_mid_frame_costs_only_its_connection()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using (Socket socket = await fixture.Agent.ConnectRawAsync(timeout.Token))
        {
            await socket.SendAsync(new byte[] { 0x10, 0, 0, 0, (byte)FrameType.Hello, (byte)'{' }, SocketFlags.None, timeout.Token);
        }
        await AssertStillServesAsync(timeout.Token);
    }

    [Fact]
    public async Task Garbage_during_exec_kills_the_command_and_ends_only_that_connection()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        using Socket socket = await fixture.Agent.ConnectRawAsync(timeout.Token);
        await using var stream = new NetworkStream(socket, ownsSocket: false);
        byte[] request = [.. GoodHello, .. Frame(FrameType.Exec, """{"argv":["sleep","100"]}""")];
        await stream.WriteAsync(request, timeout.Token);
        using var reader = new FrameReader(stream);
        Assert.Equal(FrameType.Hello, (await reader.ReadAsync(timeout.Token))!.Value.Type);
        Frame started = (await reader.ReadAsync(timeout.Token))!.Value;
        Assert.Equal(FrameType.Started, started.Type);
        string pid = Encoding.UTF8.GetString(started.Payload.Span).Split(':')[1].TrimEnd('}');
        await stream.WriteAsync(new byte[] { 1, 0, 0, 0, 0xEE }, timeout.Token);
        Frame error = (await reader.ReadAsync(timeout.Token))!.Value;
        Assert.Equal(FrameType.Error, error.Type);
        Assert.Contains("unknown frame type 0xee", Encoding.UTF8.GetString(error.Payload.Span), StringComparison.Ordinal);
        for (int i = 0; i < 100 && Directory.Exists($"/proc/{pid}"); i++)
        {
            await Task.Delay(50, timeout.Token);
        }
        Assert.False(Directory.Exists($"/proc/{pid}"));
        await AssertStillServesAsync(timeout.Token);
    }

    private async Task AssertStillServesAsync(CancellationToken ct)
    {
        await using AgentClient client = await fixture.Agent.ConnectAsync(ct);
        await using ExecSession session = await client.ExecAsync(new ExecRequest(["echo", "ok"]), ct);
        var stdout = new Capture();
        Assert.Equal(0, await session.RunAsync(null, stdout, Stream.Null, ct));
        Assert.Equal("ok\n", stdout.Text);
    }

    private static byte[] Frame(FrameType type, string payload)
    {
        byte[] body = Encoding.UTF8.GetBytes(payload);
        return [.. Header(body.Length + 1, type), .. body];
    }

    private static byte[] Header(int length, FrameType type)
    {
        byte[] header = new byte[5];
        BinaryPrimitives.WriteInt32LittleEndian(header, length);
        header[4] = (byte)type;
        return header;
    }
}
