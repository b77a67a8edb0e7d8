using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Links;

/// <summary>
/// The one socket call the event loop makes without .NET's Socket: a non-blocking connect(2), for both families.
/// Socket.Connect on a non-blocking socket reports EINPROGRESS by throwing, and an exception per guest connection is a
/// large share of what a connection costs the gateway. P/Invoke only (no unsafe code): the sockaddr is built as bytes.
/// </summary>
internal static partial class HostSocket
{
    private const int EinProgress = 115;
    private const int EAlready = 114;
    private const int Eintr = 4;
    private const ushort AfInet = 2;
    private const ushort AfInet6 = 10;
    private static readonly IpAddr Loopback6 = IpAddr.V6(1);

    /// <summary>Outcome of <see cref="StartConnect"/>.</summary>
    public enum ConnectStart
    {
        Connected,
        InProgress,
        Failed,
    }

    /// <summary>
    /// Starts connecting a non-blocking stream socket of the address's family to <paramref name="address"/>:<paramref
    /// name="port"/>. On <see cref="ConnectStart.Failed"/>, <paramref name="error"/> says why.
    /// A loopback connect has finished by the time connect(2) returns EINPROGRESS (the listener's SYN-ACK, or RST, is
    /// processed from the socket's backlog as the call releases it), so it is asked once more: a second connect(2) on a
    /// socket whose handshake is done returns 0, and on one that was refused the error (net/ipv4/af_inet.c,
    /// __inet_stream_connect, which IPv6's inet6_stream_ops use too). The guest's SYN-ACK or RST then leaves in the same
    /// turn as its SYN came, rather than after another trip through epoll.
    /// </summary>
    public static ConnectStart StartConnect(Socket socket, IpAddr address, ushort port, out string? error)
    {
        Span<byte> sa = stackalloc byte[28];
        sa = SocketAddress(sa, address, port);
        error = null;
        int errno = Connect(socket, sa);
        if (errno == 0)
        {
            return ConnectStart.Connected;
        }
        if (errno == EinProgress)
        {
            if (!(address.IsV4 ? (address.Ipv4 >> 24) == 127 : address == Loopback6))
            {
                return ConnectStart.InProgress;
            }
            errno = Connect(socket, sa);
            if (errno == 0)
            {
                return ConnectStart.Connected;
            }
            if (errno == EAlready)
            {
                return ConnectStart.InProgress;
            }
        }
        error = Marshal.GetPInvokeErrorMessage(errno);
        return ConnectStart.Failed;
    }

    /// <summary>connect(2), retried on EINTR: 0 or the errno.</summary>
    private static int Connect(Socket socket, ReadOnlySpan<byte> sa)
    {
        while (true)
        {
            if (connect(socket.SafeHandle, sa, sa.Length) == 0)
            {
                return 0;
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno != Eintr)
            {
                return errno;
            }
        }
    }

    /// <summary>
    /// struct sockaddr_in (ip(7)): sa_family_t (native order), in_port_t and in_addr (network order), 8 zero bytes; or
    /// struct sockaddr_in6 (ipv6(7)): family, port, flowinfo 0, the 16-byte address, scope id 0 (a guest's destination
    /// is never link-local: the gateway does not carry those).
    /// </summary>
    private static Span<byte> SocketAddress(Span<byte> sa, IpAddr address, ushort port)
    {
        sa.Clear();
        BinaryPrimitives.WriteUInt16BigEndian(sa.Slice(2), port);
        if (address.IsV4)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(sa, AfInet);
            BinaryPrimitives.WriteUInt32BigEndian(sa.Slice(4), address.Ipv4);
            return sa[..16];
        }
        BinaryPrimitives.WriteUInt16LittleEndian(sa, AfInet6);
        BinaryPrimitives.WriteUInt128BigEndian(sa.Slice(8), address.Value);
        return sa[..28];
    }

    /// <summary>The local port of a bound or connecting socket of either family (getsockname(2)), 0 when it has none.</summary>
    public static int LocalPort(Socket socket)
    {
        // .NET's Socket.LocalEndPoint is null for a socket that was connected by the P/Invoke above.
        Span<byte> sa = stackalloc byte[28];
        int length = sa.Length;
        return getsockname(socket.SafeHandle, sa, ref length) == 0 && length >= 4 ? BinaryPrimitives.ReadUInt16BigEndian(sa.Slice(2)) : 0;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getsockname(SafeSocketHandle fd, Span<byte> address, ref int length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int connect(SafeSocketHandle fd, ReadOnlySpan<byte> address, int length);
}
