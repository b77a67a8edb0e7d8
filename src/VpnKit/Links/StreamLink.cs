using System.Buffers.Binary;
using System.Net.Sockets;

namespace Kit.VpnKit.Links;

/// <summary>
/// A stream socket carrying length-prefixed frames: QEMU's -netdev stream/socket (4-byte big-endian length,
/// net/stream.c) or hyperkit's VMN3T data phase (2-byte little-endian length). A peer sending an impossible length
/// loses its link.
/// </summary>
public sealed class StreamLink : ILink
{
    private readonly Socket _socket;
    private readonly bool _qemu;
    private readonly object _sendGate = new();
    private readonly byte[] _sendBuffer;
    private readonly byte[] _header = new byte[4];

    public StreamLink(Socket socket, string name, int mtu, bool qemuFraming)
    {
        _socket = socket;
        _qemu = qemuFraming;
        Name = name;
        MaxFrame = mtu + 14;
        _sendBuffer = new byte[4 + 65536];
    }

    public string Name { get; }
    public int MaxFrame { get; }
    private int HeaderSize => _qemu ? 4 : 2;

    public int Receive(Span<byte> buffer)
    {
        try
        {
            while (true)
            {
                if (!ReadExactly(_header.AsSpan(0, HeaderSize)))
                {
                    return 0;
                }
                int len = _qemu ? (int)BinaryPrimitives.ReadUInt32BigEndian(_header) : BinaryPrimitives.ReadUInt16LittleEndian(_header);
                if (len > buffer.Length || len < 0)
                {
                    return 0; // Protocol violation: drop the link, not the process.
                }
                if (!ReadExactly(buffer.Slice(0, len)))
                {
                    return 0;
                }
                if (len > 0)
                {
                    return len;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return 0;
        }
    }

    private bool ReadExactly(Span<byte> b)
    {
        while (b.Length > 0)
        {
            int n = _socket.Receive(b);
            if (n == 0)
            {
                return false;
            }
            b = b.Slice(n);
        }
        return true;
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        if (frame.Length > MaxFrame + 64 || (!_qemu && frame.Length > 65535))
        {
            return;
        }
        lock (_sendGate)
        {
            int h = HeaderSize;
            if (_qemu)
            {
                BinaryPrimitives.WriteUInt32BigEndian(_sendBuffer, (uint)frame.Length);
            }
            else
            {
                BinaryPrimitives.WriteUInt16LittleEndian(_sendBuffer, (ushort)frame.Length);
            }
            frame.CopyTo(_sendBuffer.AsSpan(h));
            try
            {
                ReadOnlySpan<byte> all = _sendBuffer.AsSpan(0, h + frame.Length);
                while (all.Length > 0)
                {
                    all = all.Slice(_socket.Send(all));
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }
    }

    public void Dispose() => _socket.Dispose();
}

/// <summary>QEMU -netdev dgram: one Ethernet frame per datagram; the peer's address is learned from its first datagram.</summary>
public sealed class DgramLink : ILink
{
    private readonly Socket _socket;
    private readonly byte[] _rx = new byte[65536];
    private System.Net.EndPoint? _peer;

    public DgramLink(Socket socket, string name, int mtu)
    {
        _socket = socket;
        Name = name;
        MaxFrame = mtu + 14;
    }

    public string Name { get; }
    public int MaxFrame { get; }

    public int Receive(Span<byte> buffer)
    {
        byte[] tmp = _rx;
        try
        {
            while (true)
            {
                System.Net.EndPoint from = _socket.LocalEndPoint is System.Net.Sockets.UnixDomainSocketEndPoint
                    ? new UnixDomainSocketEndPoint("/") : new System.Net.IPEndPoint(System.Net.IPAddress.Any, 0);
                int n = _socket.ReceiveFrom(tmp, ref from);
                _peer = from;
                if (n > 0 && n <= buffer.Length)
                {
                    tmp.AsSpan(0, n).CopyTo(buffer);
                    return n;
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return 0;
        }
    }

    public void Send(ReadOnlySpan<byte> frame)
    {
        System.Net.EndPoint? peer = _peer;
        if (peer is null)
        {
            return;
        }
        try
        {
            _socket.SendTo(frame, SocketFlags.None, peer);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    public void Dispose() => _socket.Dispose();
}
