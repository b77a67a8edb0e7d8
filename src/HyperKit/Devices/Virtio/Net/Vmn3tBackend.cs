using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace Kit.HyperKit.Devices.Virtio.Net;

/// <summary>
/// The client side of hyperkit's virtio-vpnkit protocol ("VMN3T"), so the VMM can use the original vpnkit, gvproxy's
/// --listen-vpnkit or `kit net serve --vmnet` over a Unix socket. Handshake (all little-endian, fixed sizes): 49-byte
/// init each way {magic "VMN3T", version u32 = 22, 40-byte commit}; a 41-byte command {1 = ethernet, 36-byte UUID
/// text, 4 zero bytes}; a 258-byte response {1 = VIF: mtu u16, max_packet_size u16, mac[6] | 2 = disconnect: len u8,
/// reason}. Then each frame is a u16 length and the Ethernet frame, both ways. The protocol has no offloads: the
/// device offers none, so the guest sends finished checksums and MTU-sized frames.
/// </summary>
public sealed class Vmn3tBackend : INetBackend
{
    public const int InitSize = 49, CommandSize = 41, ResponseSize = 258, Version = 22;
    private static ReadOnlySpan<byte> Magic => "VMN3T"u8;

    private readonly Socket _socket;
    private readonly int _maxPacket;
    private readonly byte[] _sendBuffer = new byte[2 + 65535];
    private Thread? _reader, _writer;
    private NetPort? _port;
    private volatile bool _disposed;

    private Vmn3tBackend(Socket socket, int mtu, int maxPacket, byte[] mac)
    {
        _socket = socket;
        _maxPacket = maxPacket;
        Info = new NetBackendInfo(Offload: false, mtu, mac);
    }

    public NetBackendInfo Info { get; }

    /// <summary>Frames from the server that did not fit the protocol's limits (the connection is then closed).</summary>
    public long BadFrames { get; private set; }

    /// <summary>Connects to a VMN3T server at <paramref name="path"/> and runs the handshake.</summary>
    /// <exception cref="IOException">Connect failure, a wrong magic, a Disconnect (with the server's reason).</exception>
    public static Vmn3tBackend Connect(string path, Guid uuid, TimeSpan timeout)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
            socket.ReceiveTimeout = (int)timeout.TotalMilliseconds;
            socket.SendTimeout = (int)timeout.TotalMilliseconds;
            byte[] init = new byte[InitSize];
            Magic.CopyTo(init);
            BinaryPrimitives.WriteUInt32LittleEndian(init.AsSpan(5), Version);
            Encoding.ASCII.GetBytes("0000000000000000000000000000000000000000", init.AsSpan(9));
            socket.Send(init);
            byte[] reply = new byte[ResponseSize];
            ReadExactly(socket, reply.AsSpan(0, InitSize));
            if (!reply.AsSpan(0, 5).SequenceEqual(Magic))
            {
                throw new IOException($"{path}: not a VMN3T server (bad magic)");
            }
            byte[] command = new byte[CommandSize];
            command[0] = 1; // Ethernet
            Encoding.ASCII.GetBytes(uuid.ToString("D"), command.AsSpan(1, 36));
            socket.Send(command);
            ReadExactly(socket, reply);
            if (reply[0] == 2)
            {
                int len = Math.Min((int)reply[1], ResponseSize - 2);
                throw new IOException($"{path}: the server refused the connection: {Encoding.ASCII.GetString(reply, 2, len)}");
            }
            if (reply[0] != 1)
            {
                throw new IOException($"{path}: unexpected VMN3T response type {reply[0]}");
            }
            int mtu = BinaryPrimitives.ReadUInt16LittleEndian(reply.AsSpan(1));
            int maxPacket = BinaryPrimitives.ReadUInt16LittleEndian(reply.AsSpan(3));
            byte[] mac = reply.AsSpan(5, 6).ToArray();
            if (mtu < 68 || maxPacket < 14)
            {
                throw new IOException($"{path}: the server announced MTU {mtu}, max packet {maxPacket}");
            }
            socket.ReceiveTimeout = 0;
            socket.SendTimeout = 0;
            return new Vmn3tBackend(socket, mtu, maxPacket, mac);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new IOException($"{path}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }

    private static void ReadExactly(Socket socket, Span<byte> buffer)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = socket.Receive(buffer[done..]);
            if (n <= 0)
            {
                throw new IOException("the VMN3T server closed the connection");
            }
            done += n;
        }
    }

    public void Attach(NetPort port)
    {
        _port = port;
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "vmn3t-rx" };
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "vmn3t-tx" };
        _reader.Start();
        _writer.Start();
    }

    private void ReadLoop()
    {
        byte[] buffer = new byte[65535];
        Span<byte> length = stackalloc byte[2];
        try
        {
            while (!_disposed)
            {
                ReadExactly(_socket, length);
                int n = BinaryPrimitives.ReadUInt16LittleEndian(length);
                ReadExactly(_socket, buffer.AsSpan(0, n));
                if (n < 14)
                {
                    BadFrames++;
                    continue;
                }
                _port!.Deliver(buffer.AsSpan(0, n));
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
        }
        _port!.Disconnected();
    }

    private void WriteLoop()
    {
        FrameRing ring = _port!.Transmitted;
        try
        {
            while (ring.WaitPeek(out Span<byte> record))
            {
                Span<byte> frame = record[VirtioNetHeader.Size..];
                // No offloads were offered, so the header carries nothing; frames above the server's limit are dropped
                // here as vpnkit would drop them.
                if (frame.Length <= Math.Min(_maxPacket, 65535))
                {
                    BinaryPrimitives.WriteUInt16LittleEndian(_sendBuffer, (ushort)frame.Length);
                    frame.CopyTo(_sendBuffer.AsSpan(2));
                    int total = 2 + frame.Length;
                    int sent = 0;
                    while (sent < total)
                    {
                        sent += _socket.Send(_sendBuffer.AsSpan(sent, total - sent));
                    }
                }
                ring.Release();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    public void Dispose()
    {
        _disposed = true;
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        _socket.Dispose();
    }
}
