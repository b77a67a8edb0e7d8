using System.Buffers.Binary;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.NineP.Vfs;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.NineP.Tests;

/// <summary>
/// <see cref="AfterReply"/>: work a handler defers runs on the connection's thread after that request's reply was
/// written and before the next request is read (a blob's read-ahead between two Treads, DataKit's BlobCursor).
/// </summary>
public sealed class AfterReplyTests
{
    /// <summary>A byte stream that serves scripted frames and logs, in order, each frame's first read and each write.</summary>
    private sealed class ScriptedStream(List<string> log, params byte[][] frames) : Stream
    {
        private int _frame;
        private int _at;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_frame == frames.Length)
            {
                return 0;
            }
            if (_at == 0)
            {
                log.Add($"read {_frame}");
            }
            int n = Math.Min(buffer.Length, frames[_frame].Length - _at);
            frames[_frame].AsSpan(_at, n).CopyTo(buffer);
            _at += n;
            if (_at == frames[_frame].Length)
            {
                (_frame, _at) = (_frame + 1, 0);
            }
            return n;
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default) => ValueTask.FromResult(Read(buffer.Span));

        public override void Write(byte[] buffer, int offset, int count) => log.Add($"reply tag {BinaryPrimitives.ReadUInt16LittleEndian(buffer.AsSpan(offset + 5))}");

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            log.Add($"reply tag {BinaryPrimitives.ReadUInt16LittleEndian(buffer.Span[5..])}");
            return ValueTask.CompletedTask;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

        public override void SetLength(long value) => throw new NotSupportedException();
    }

    /// <summary>Answers every frame with a bare reply of its tag, deferring one logged work item per request.</summary>
    private sealed class DeferringDispatcher(List<string> log) : INinePDispatcher
    {
        public uint MessageSize => 8192;

        public List<bool> Offered { get; } = [];

        public ValueTask<int> HandleAsync(ReadOnlyMemory<byte> frame, Memory<byte> reply, CancellationToken ct)
        {
            ushort tag = BinaryPrimitives.ReadUInt16LittleEndian(frame.Span[5..]);
            Offered.Add(AfterReply.TryDefer(static s => ((Action)s)(), (Action)(() => log.Add($"deferred tag {tag}"))));
            BinaryPrimitives.WriteUInt32LittleEndian(reply.Span, 7);
            reply.Span[4] = (byte)(frame.Span[4] + 1);
            BinaryPrimitives.WriteUInt16LittleEndian(reply.Span[5..], tag);
            return ValueTask.FromResult(7);
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    private static byte[] Frame(MessageType type, ushort tag)
    {
        byte[] f = new byte[7];
        BinaryPrimitives.WriteUInt32LittleEndian(f, 7);
        f[4] = (byte)type;
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(5), tag);
        return f;
    }

    [Fact]
    public async Task DeferredWorkRunsAfterItsReplyAndBeforeTheNextRequestIsRead()
    {
        var log = new List<string>();
        var stream = new ScriptedStream(log, Frame(MessageType.Tversion, P9.NoTag), Frame(MessageType.Tclunk, 1), Frame(MessageType.Tclunk, 2));
        var dispatcher = new DeferringDispatcher(log);
        var connection = new NinePConnection(stream, dispatcher, 16, NullLogger.Instance);
        await connection.RunAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        // Tversion is answered outside a request's scope (nothing to defer to); the others each get their turn.
        Assert.Equal([false, true, true], dispatcher.Offered);
        Assert.Equal(
            ["read 0", $"reply tag {P9.NoTag}", "read 1", "reply tag 1", "deferred tag 1", "read 2", "reply tag 2", "deferred tag 2"],
            log);
    }

    [Fact]
    public void AScopeOpenedInsideAnotherRunsItsOwnWorkAndHandsTheOfferBack()
    {
        var log = new List<string>();
        using (AfterReply.Begin())
        {
            Assert.True(AfterReply.TryDefer(static s => ((List<string>)s).Add("outer 1"), log));
            using (AfterReply.Begin())
            {
                Assert.True(AfterReply.TryDefer(static s => ((List<string>)s).Add("inner"), log));
            }
            Assert.Equal(["inner"], log);
            Assert.True(AfterReply.TryDefer(static s => ((List<string>)s).Add("outer 2"), log));
        }
        Assert.Equal(["inner", "outer 1", "outer 2"], log);
        Assert.False(AfterReply.TryDefer(static s => ((List<string>)s).Add("none"), log));
    }

    [Fact]
    public void OutsideAConnectionNothingIsDeferred()
    {
        bool ran = false;
        Assert.False(AfterReply.TryDefer(_ => ran = true, new object()));
        Assert.False(ran);
    }
}
