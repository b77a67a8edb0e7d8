using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.DataKit.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.DataKit.Tests;

/// <summary>
/// <c>kit data cat</c>'s copy (<see cref="Tree.CopyFileToAsync"/>) sends the next Tread before it writes the chunk it
/// has, so a slow destination (a pipe to cmp) and the server work at the same time instead of taking turns
/// (docs/benchmarks.md, the 64 MiB read). A relay on loopback between client and server counts the Treads sent; the
/// destination holds each write until the next Tread has passed the relay.
/// </summary>
public sealed class ClientReadAheadTests : DataKitTestBase
{
    [Fact]
    public async Task Cat_sends_the_next_read_before_writing_the_chunk_it_has()
    {
        CancellationToken ct = TestContext.Current.CancellationToken;
        byte[] content = new byte[(3 * 1024 * 1024) + 12345];
        new Random(16).NextBytes(content);
        await using (DataKitClient writer = await DataKitClient.ConnectAsync(Address, ct))
        {
            await using Transaction t = await (await writer.BranchAsync("master", ct)).TransactionAsync(ct);
            await t.CreateFileAsync("big", content, ct: ct);
            await t.CommitAsync("big", ct);
        }

        await using var relay = new TreadCountingRelay(Address);
        await using DataKitClient dk = await DataKitClient.ConnectAsync(relay.Address, ct);
        Commit head = (await (await dk.BranchAsync("master", ct)).HeadAsync(ct))!;
        var sink = new GatedSink(relay, relay.Treads);
        await head.Tree.CopyFileToAsync("big", sink, ct);

        Assert.Equal(content, sink.Bytes.ToArray());
        Assert.Equal(4, sink.Writes); // 1 MiB messages: three full chunks and the rest
        Assert.Equal(0, sink.WritesWithoutReadAhead);
    }

    /// <summary>Each write waits (up to 5 s) until the Tread after the chunk being written has been sent.</summary>
    private sealed class GatedSink(TreadCountingRelay relay, int treadsBefore) : Stream
    {
        public MemoryStream Bytes { get; } = new();
        public int Writes { get; private set; }
        public int WritesWithoutReadAhead { get; private set; }

        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Writes++;
            DateTime deadline = DateTime.UtcNow.AddSeconds(5);
            while (relay.Treads < treadsBefore + Writes + 1 && DateTime.UtcNow < deadline)
            {
                await Task.Delay(5, cancellationToken);
            }
            if (relay.Treads < treadsBefore + Writes + 1)
            {
                WritesWithoutReadAhead++;
            }
            Bytes.Write(buffer.Span);
        }

        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException("async only");
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => Bytes.Length;
        public override long Position { get => Bytes.Length; set => throw new NotSupportedException(); }
        public override void Flush()
        {
        }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
    }

    /// <summary>Forwards one connection to the server, cutting the client's bytes into 9P frames to count its Treads.</summary>
    private sealed class TreadCountingRelay : IAsyncDisposable
    {
        private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _run;
        private int _treads;

        public TreadCountingRelay(ListenAddress server)
        {
            _listener.Start();
            var ep = (IPEndPoint)_listener.LocalEndpoint;
            Address = new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}");
            _run = RunAsync((IPEndPoint)server.EndPoint);
        }

        public ListenAddress Address { get; }
        public int Treads => Volatile.Read(ref _treads);

        private async Task RunAsync(IPEndPoint server)
        {
            using TcpClient client = await _listener.AcceptTcpClientAsync(_stop.Token);
            using var upstream = new TcpClient();
            await upstream.ConnectAsync(server, _stop.Token);
            Stream down = client.GetStream();
            Stream up = upstream.GetStream();
            Task replies = up.CopyToAsync(down, _stop.Token);
            byte[] frame = new byte[2 * 1024 * 1024];
            try
            {
                while (true)
                {
                    await down.ReadExactlyAsync(frame.AsMemory(0, 4), _stop.Token);
                    int size = (int)BinaryPrimitives.ReadUInt32LittleEndian(frame);
                    await down.ReadExactlyAsync(frame.AsMemory(4, size - 4), _stop.Token);
                    if (frame[4] == (byte)MessageType.Tread)
                    {
                        Interlocked.Increment(ref _treads);
                    }
                    await up.WriteAsync(frame.AsMemory(0, size), _stop.Token);
                }
            }
            catch (Exception e) when (e is EndOfStreamException or IOException or OperationCanceledException)
            {
            }
            upstream.Client.Shutdown(SocketShutdown.Send);
            await Task.WhenAny(replies);
        }

        public async ValueTask DisposeAsync()
        {
            _stop.Cancel();
            _listener.Stop();
            await Task.WhenAny(_run);
            _stop.Dispose();
        }
    }
}
