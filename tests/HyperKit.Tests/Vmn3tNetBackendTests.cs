using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

/// <summary>The VMN3T client against a scripted server that checks the exact bytes of vpnkit's protocol.</summary>
public sealed class Vmn3tNetBackendTests : IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"kit-vmn3t-{Guid.NewGuid():N}.sock");
    private readonly Socket _listener = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);

    public Vmn3tNetBackendTests()
    {
        _listener.Bind(new UnixDomainSocketEndPoint(_path));
        _listener.Listen(1);
    }

    public void Dispose()
    {
        _listener.Dispose();
        File.Delete(_path);
    }

    private static void ReadExactly(Socket s, Span<byte> buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = s.Receive(buffer[done..]);
            Assert.True(n > 0, "client closed early");
            done += n;
        }
    }

    /// <summary>Accepts one client, checks init and command, answers with <paramref name="response"/>.</summary>
    private Task<Socket> Serve(byte[] response, Guid expectedUuid) => Task.Run(() =>
    {
        Socket s = _listener.Accept();
        byte[] init = new byte[49];
        ReadExactly(s, init);
        Assert.Equal("VMN3T"u8.ToArray(), init[..5]);
        Assert.Equal(22u, BinaryPrimitives.ReadUInt32LittleEndian(init.AsSpan(5)));
        byte[] mine = new byte[49];
        "VMN3T"u8.CopyTo(mine);
        BinaryPrimitives.WriteUInt32LittleEndian(mine.AsSpan(5), 22);
        Encoding.ASCII.GetBytes("0123456789012345678901234567890123456789", mine.AsSpan(9));
        s.Send(mine);
        byte[] command = new byte[41];
        ReadExactly(s, command);
        Assert.Equal(1, command[0]);
        Assert.Equal(expectedUuid.ToString("D"), Encoding.ASCII.GetString(command, 1, 36));
        Assert.Equal(new byte[4], command[37..]);
        s.Send(response);
        return s;
    });

    [Fact]
    public async Task Handshake_then_frames_cross_both_ways_with_two_byte_lengths()
    {
        var uuid = Guid.NewGuid();
        byte[] response = new byte[258];
        response[0] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(response.AsSpan(1), 1500);
        BinaryPrimitives.WriteUInt16LittleEndian(response.AsSpan(3), 1550);
        byte[] mac = [0x02, 0x50, 0x00, 0x00, 0x00, 0x07];
        mac.CopyTo(response, 5);
        Task<Socket> server = Serve(response, uuid);
        using Vmn3tBackend backend = Vmn3tBackend.Connect(_path, uuid, TimeSpan.FromSeconds(10));
        using Socket peer = await server;
        Assert.False(backend.Info.Offload);
        Assert.Equal(1500, backend.Info.Mtu);

        using var memory = new GuestMemory(1 << 20);
        var rx = new SplitQueue(memory, 16);
        var tx = new SplitQueue(memory, 16);
        var rxDriver = new QueueDriver(memory, 16, 0x1000, 0x2000, 0x3000);
        var txDriver = new QueueDriver(memory, 16, 0x5000, 0x6000, 0x7000);
        rxDriver.Configure(rx);
        txDriver.Configure(tx);
        var net = new VirtioNet(backend, [0x02, 1, 2, 3, 4, 5]);
        Assert.Equal(mac, net.Mac.ToArray()); // the server's MAC wins
        net.DriverFeatures = VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf;
        using var delivered = new SemaphoreSlim(0);
        net.ProcessQueue = q =>
        {
            lock (net)
            {
                net.Process(q, q == 0 ? rx : tx, memory);
            }
            delivered.Release();
        };

        // server -> guest
        byte[] down = new byte[100];
        Random.Shared.NextBytes(down);
        byte[] wire = new byte[2 + down.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(wire, (ushort)down.Length);
        down.CopyTo(wire, 2);
        lock (net)
        {
            rxDriver.Post((0x10000, 2048, true));
        }
        peer.Send(wire);
        Assert.True(await delivered.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.Equal(1, rxDriver.UsedIdx);
        Assert.Equal((uint)(12 + down.Length), rxDriver.UsedEntry(0).Len);
        Assert.Equal(down, memory.GetSpan(0x10000 + 12, down.Length).ToArray());

        // guest -> server
        byte[] up = new byte[300];
        Random.Shared.NextBytes(up);
        memory.GetSpan(0x20000, 12).Clear();
        memory.TryWrite(0x20100, up);
        lock (net)
        {
            txDriver.Post((0x20000, 12, false), (0x20100, (uint)up.Length, false));
            net.Process(1, tx, memory);
        }
        byte[] got = new byte[2 + up.Length];
        peer.ReceiveTimeout = 10_000;
        ReadExactly(peer, got);
        Assert.Equal(up.Length, BinaryPrimitives.ReadUInt16LittleEndian(got));
        Assert.Equal(up, got[2..]);
        net.Dispose();
    }

    [Fact]
    public async Task A_disconnect_response_becomes_an_error_with_the_servers_reason()
    {
        var uuid = Guid.NewGuid();
        byte[] response = new byte[258];
        response[0] = 2;
        byte[] reason = Encoding.ASCII.GetBytes("No IP addresses available.");
        response[1] = (byte)reason.Length;
        reason.CopyTo(response, 2);
        Task<Socket> server = Serve(response, uuid);
        IOException e = Assert.Throws<IOException>(() => Vmn3tBackend.Connect(_path, uuid, TimeSpan.FromSeconds(10)));
        Assert.Contains("No IP addresses available.", e.Message, StringComparison.Ordinal);
        (await server).Dispose();
    }
}
