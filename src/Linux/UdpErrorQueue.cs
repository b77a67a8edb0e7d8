using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// ICMP errors for an unconnected UDP socket (ip(7) IP_RECVERR, ipv6(7) IPV6_RECVERR). Without the option Linux tells
/// an unconnected socket nothing of the port unreachable its datagram earned (RFC 1122 §4.1.3.3 leaves the choice to
/// the stack). With it, each error sets the socket's pending error (its next send or receive fails with it once:
/// ECONNREFUSED for a port unreachable) and queues the details: the original destination, the ICMP type and code, and
/// the offending datagram's payload as far as the ICMP message quoted it. The queue is charged to the socket's receive
/// buffer, so whoever enables it must drain it with <see cref="TryRead"/>, or datagrams start to drop.
/// </summary>
/// <remarks>
/// <c>recvmsg(MSG_ERRQUEUE)</c> needs a <c>struct msghdr</c> with pointers in it, which .NET's sockets do not offer
/// (their flags allow no MSG_ERRQUEUE). The structures live in one unmanaged block per reader (no unsafe code: offsets
/// and <see cref="Marshal"/>), laid out for LP64 (x86-64 and arm64 share it). A reader is not thread-safe: its owner
/// serialises calls.
/// </remarks>
public sealed partial class UdpErrorQueue : IDisposable
{
    // netinet/in.h, linux/in6.h, linux/errqueue.h, asm-generic/errno.h, bits/socket.h.
    private const int SOL_IP = 0, IP_RECVERR = 11, SOL_IPV6 = 41, IPV6_RECVERR = 25;
    private const int MSG_DONTWAIT = 0x40, MSG_ERRQUEUE = 0x2000;
    private const byte SO_EE_ORIGIN_ICMP = 2, SO_EE_ORIGIN_ICMP6 = 3;

    /// <summary>errno of a port unreachable (ICMP type 3 code 3, ICMPv6 type 1 code 4).</summary>
    public const int ECONNREFUSED = 111;

    // The block: msghdr (56 bytes), one iovec (16), the name (a sockaddr_in6 fits in 28), the control data, the payload.
    private const int MsgAt = 0, IovAt = 64, NameAt = 80, NameRoom = 32, ControlAt = 112, ControlRoom = 256, DataAt = 368;
    private readonly nint _block;
    private readonly int _dataRoom;

    /// <param name="payloadRoom">Bytes of the offending payload kept per error (more is cut).</param>
    public UdpErrorQueue(int payloadRoom = 65536)
    {
        _dataRoom = payloadRoom;
        _block = Marshal.AllocHGlobal(DataAt + payloadRoom);
    }

    /// <summary>Asks the kernel to queue ICMP errors for <paramref name="socket"/> (UDP, either family).</summary>
    /// <exception cref="SocketException">setsockopt failed.</exception>
    public static void Enable(Socket socket)
    {
        int one = 1;
        bool v6 = socket.AddressFamily == AddressFamily.InterNetworkV6;
        if (SetSockOpt(socket.SafeHandle, v6 ? SOL_IPV6 : SOL_IP, v6 ? IPV6_RECVERR : IP_RECVERR, ref one, sizeof(int)) != 0)
        {
            throw new SocketException(Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>One queued error that an ICMP or ICMPv6 message caused.</summary>
    /// <param name="Errno">What the socket call failed with (<see cref="ECONNREFUSED"/> for a port unreachable).</param>
    /// <param name="Destination">Where the offending datagram went.</param>
    /// <param name="PayloadLength">Bytes of its payload copied to the caller (what the ICMP message quoted, at most the room).</param>
    public readonly record struct QueuedError(int Errno, byte IcmpType, byte IcmpCode, IPEndPoint Destination, int PayloadLength);

    /// <summary>
    /// Takes the oldest queued error of <paramref name="socket"/> without waiting: true with it (the payload in
    /// <paramref name="payload"/>), false when the queue is empty or the socket is closed. Errors that did not come from
    /// ICMP (a local one) are taken and skipped.
    /// </summary>
    public bool TryRead(Socket socket, byte[] payload, out QueuedError error)
    {
        error = default;
        for (int skipped = 0; skipped < 16; skipped++)
        {
            Marshal.WriteIntPtr(_block, MsgAt, _block + NameAt);
            Marshal.WriteInt64(_block, MsgAt + 8, NameRoom);
            Marshal.WriteIntPtr(_block, MsgAt + 16, _block + IovAt);
            Marshal.WriteInt64(_block, MsgAt + 24, 1);
            Marshal.WriteIntPtr(_block, MsgAt + 32, _block + ControlAt);
            Marshal.WriteInt64(_block, MsgAt + 40, ControlRoom);
            Marshal.WriteInt64(_block, MsgAt + 48, 0);
            Marshal.WriteIntPtr(_block, IovAt, _block + DataAt);
            Marshal.WriteInt64(_block, IovAt + 8, Math.Min(_dataRoom, payload.Length));
            nint n;
            try
            {
                n = RecvMsg(socket.SafeHandle, _block + MsgAt, MSG_ERRQUEUE | MSG_DONTWAIT);
            }
            catch (ObjectDisposedException)
            {
                return false;
            }
            if (n < 0)
            {
                return false; // EAGAIN: drained (or EBADF: closed)
            }
            if (TryParseControl(out int errno, out byte type, out byte code) && ReadName() is IPEndPoint to)
            {
                int copied = (int)Math.Min(n, Math.Min(_dataRoom, payload.Length));
                Marshal.Copy(_block + DataAt, payload, 0, copied);
                error = new QueuedError(errno, type, code, to, copied);
                return true;
            }
        }
        return false;
    }

    /// <summary>Walks the control messages (CMSG_FIRSTHDR/NXTHDR: 16-byte header, 8-byte alignment) for the extended error.</summary>
    private bool TryParseControl(out int errno, out byte type, out byte code)
    {
        errno = 0;
        type = code = 0;
        long length = Math.Min(Marshal.ReadInt64(_block, MsgAt + 40), ControlRoom);
        for (long at = 0; at + 16 <= length;)
        {
            long cmsgLen = Marshal.ReadInt64(_block, ControlAt + (int)at);
            if (cmsgLen < 16 || at + cmsgLen > length)
            {
                return false;
            }
            int level = Marshal.ReadInt32(_block, ControlAt + (int)at + 8);
            int kind = Marshal.ReadInt32(_block, ControlAt + (int)at + 12);
            if (cmsgLen >= 16 + 16 && ((level == SOL_IP && kind == IP_RECVERR) || (level == SOL_IPV6 && kind == IPV6_RECVERR)))
            {
                // struct sock_extended_err: ee_errno (u32), ee_origin, ee_type, ee_code, ee_pad (u8 each), ee_info, ee_data.
                int ee = ControlAt + (int)at + 16;
                byte origin = Marshal.ReadByte(_block, ee + 4);
                errno = Marshal.ReadInt32(_block, ee);
                type = Marshal.ReadByte(_block, ee + 5);
                code = Marshal.ReadByte(_block, ee + 6);
                return origin is SO_EE_ORIGIN_ICMP or SO_EE_ORIGIN_ICMP6;
            }
            at += (cmsgLen + 7) & ~7L;
        }
        return false;
    }

    /// <summary>The original destination (ip(7): "supplied via msg_name"): sockaddr_in or sockaddr_in6.</summary>
    private IPEndPoint? ReadName()
    {
        int length = Marshal.ReadInt32(_block, MsgAt + 8);
        byte[] name = new byte[Math.Min(length, NameRoom)];
        Marshal.Copy(_block + NameAt, name, 0, name.Length);
        if (name.Length >= 16 && name[0] == 2 && name[1] == 0)
        {
            return new IPEndPoint(new IPAddress(name.AsSpan(4, 4)), (name[2] << 8) | name[3]);
        }
        if (name.Length >= 24 && name[0] == 10 && name[1] == 0)
        {
            return new IPEndPoint(new IPAddress(name.AsSpan(8, 16)), (name[2] << 8) | name[3]);
        }
        return null;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _freed, 1) == 0)
        {
            Marshal.FreeHGlobal(_block);
        }
    }

    private int _freed;

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    private static partial nint RecvMsg(SafeHandle fd, nint msg, int flags);

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    private static partial int SetSockOpt(SafeHandle fd, int level, int name, ref int value, uint length);
}
