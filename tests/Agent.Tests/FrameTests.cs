using System.Text;
using CsCheck;
using Kit.Agent.Protocol;

namespace Kit.Agent.Tests;

/// <summary>The frame format and its reader: golden bytes, bounds, and arbitrary input never throwing anything else.</summary>
public sealed class FrameTests
{
    [Fact]
    public async Task Writer_emits_the_documented_layout_and_the_reader_reads_it_back()
    {
        var buffer = new MemoryStream();
        var writer = new FrameWriter(buffer);
        await writer.WriteAsync(FrameType.Stdout, "hi"u8.ToArray(), CancellationToken.None);
        writer.Write(FrameType.StdinClose, []);
        Assert.Equal(new byte[] { 3, 0, 0, 0, 0x31, (byte)'h', (byte)'i', 1, 0, 0, 0, 0x21 }, buffer.ToArray());

        buffer.Position = 0;
        using var reader = new FrameReader(buffer);
        Frame first = (await reader.ReadAsync(CancellationToken.None))!.Value;
        Assert.Equal(FrameType.Stdout, first.Type);
        Assert.Equal("hi"u8.ToArray(), first.Payload.ToArray());
        Assert.Equal(FrameType.StdinClose, (await reader.ReadAsync(CancellationToken.None))!.Value.Type);
        Assert.Null(await reader.ReadAsync(CancellationToken.None));
    }

    [Fact]
    public async Task Json_control_frames_use_camel_case()
    {
        var buffer = new MemoryStream();
        await new FrameWriter(buffer).WriteJsonAsync(FrameType.Exit, new ExitMessage(130) { Signal = 2 },
            AgentJsonContext.Default.ExitMessage, CancellationToken.None);
        Assert.Equal("""{"code":130,"signal":2}""", Encoding.UTF8.GetString(buffer.ToArray().AsSpan(5)));
    }

    [Theory]
    [InlineData(new byte[] { 0, 0, 0, 0 }, "length 0")]
    [InlineData(new byte[] { 1, 0, 0x10, 0 }, "exceeds")]
    [InlineData(new byte[] { 1, 0, 0, 0, 0x7F }, "unknown frame type")]
    [InlineData(new byte[] { 2, 0, 0, 0, 0x03, 0 }, "unexpected bytes")]
    [InlineData(new byte[] { 5, 0, 0, 0, 0x01 }, "ended inside a frame")]
    [InlineData(new byte[] { 5, 0 }, "ended inside a frame's length")]
    public async Task Bad_frames_are_protocol_errors_with_a_reason(byte[] input, string reason)
    {
        using var reader = new FrameReader(new MemoryStream(input));
        var e = await Assert.ThrowsAsync<AgentProtocolException>(async () => await reader.ReadAsync(CancellationToken.None));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Data_frames_are_bounded_below_the_frame_bound()
    {
        Assert.Null(Frames.Validate((byte)FrameType.Stdout, Frames.MaxData));
        Assert.NotNull(Frames.Validate((byte)FrameType.Stdout, Frames.MaxData + 1));
        Assert.Null(Frames.Validate((byte)FrameType.Ports, Frames.MaxFrame - 1));
    }

    [Fact]
    public void Arbitrary_bytes_never_throw_anything_but_a_protocol_error()
    {
        // Mostly-valid prefixes (small lengths, known types) get the fuzzing past the first check more often.
        Gen<byte[]> framed = Gen.Select(Gen.Int[1, 64], OneOf(Enum.GetValues<FrameType>()), Gen.Byte.Array[0, 80],
            (length, type, rest) => (byte[])[(byte)length, 0, 0, 0, (byte)type, .. rest]);
        Gen.OneOf(Gen.Byte.Array[0, 200], framed).Sample(bytes =>
        {
            using var reader = new FrameReader(new MemoryStream(bytes));
            try
            {
                while (reader.ReadAsync(CancellationToken.None).AsTask().GetAwaiter().GetResult() is { } frame)
                {
                    DecodeAsEverything(frame);
                }
            }
            catch (AgentProtocolException)
            {
            }
        }, iter: 20_000);
    }

    [Fact]
    public void Arbitrary_json_payloads_never_throw_anything_but_a_protocol_error()
    {
        Gen<string> json = OneOf("{}", "null", "[]", "{\"argv\":null}", "{\"argv\":[null]}", "{\"version\":\"1\"}",
            "{\"rows\":-1,\"cols\":70000}", "{\"ports\":[{\"protocol\":1}]}", "{\"env\":{\"a\":null}}", "{\"pid\":1e99}",
            "{\"code\":1,\"signal\":true}", "\"\\ud800\"", "{\"path\":\"" + new string('a', 10_000) + "\"}");
        Gen.OneOf(json, Gen.String[0, 60]).Sample(text =>
        {
            var frame = new Frame(FrameType.Exec, Encoding.UTF8.GetBytes(text));
            DecodeAsEverything(frame);
        }, iter: 5_000);
    }

    private static Gen<T> OneOf<T>(params T[] values) => Gen.Int[0, values.Length - 1].Select(i => values[i]);

    private static void DecodeAsEverything(Frame frame)
    {
        Try(() => Messages.Decode(frame, AgentJsonContext.Default.HelloMessage));
        Try(() => Messages.Decode(frame, AgentJsonContext.Default.ExecMessage));
        Try(() => Messages.Decode(frame, AgentJsonContext.Default.PortsMessage));
        Try(() => Messages.Decode(frame, AgentJsonContext.Default.ExitMessage));
        Try(() => Messages.Decode(frame, AgentJsonContext.Default.ResizeMessage));
        Try(() => Messages.Decode(frame, AgentJsonContext.Default.ForwardUnixMessage));
        Try(() => Child.Validate(Messages.Decode(frame, AgentJsonContext.Default.ExecMessage)));
        _ = Messages.DecodeError(frame);
    }

    private static void Try(Action decode)
    {
        try
        {
            decode();
        }
        catch (AgentProtocolException)
        {
        }
    }

    [Fact]
    public async Task A_client_facing_garbage_fails_with_a_protocol_error()
    {
        await Gen.Byte.Array[0, 64].SampleAsync(async bytes =>
        {
            var stream = new DuplexStream(bytes);
            try
            {
                await using AgentClient client = await AgentClient.ConnectAsync(stream, CancellationToken.None);
            }
            catch (AgentProtocolException)
            {
            }
        }, iter: 2_000);
    }

    [Fact]
    public async Task A_client_refuses_an_agent_of_another_version()
    {
        var reply = new MemoryStream();
        await new FrameWriter(reply).WriteJsonAsync(FrameType.Hello, new HelloMessage(2), AgentJsonContext.Default.HelloMessage, CancellationToken.None);
        var e = await Assert.ThrowsAsync<AgentProtocolException>(() => AgentClient.ConnectAsync(new DuplexStream(reply.ToArray()), CancellationToken.None));
        Assert.Contains("version 2", e.Message, StringComparison.Ordinal);
    }

    /// <summary>Reads a fixed script of bytes, swallows writes.</summary>
    private sealed class DuplexStream(byte[] input) : Stream
    {
        private readonly MemoryStream _input = new(input);

        public override int Read(byte[] buffer, int offset, int count) => _input.Read(buffer, offset, count);

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            ValueTask.FromResult(_input.Read(buffer.Span));

        public override void Write(byte[] buffer, int offset, int count)
        {
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

        public override void Flush()
        {
        }

        public override bool CanRead => true;

        public override bool CanSeek => false;

        public override bool CanWrite => true;

        public override long Length => throw new NotSupportedException();

        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }
}
