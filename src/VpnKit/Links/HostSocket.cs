using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Kit.VpnKit.Links;

/// <summary>
/// The one socket call the event loop makes without .NET's Socket: a non-blocking connect(2). Socket.Connect on a
/// non-blocking socket reports EINPROGRESS by throwing, and an exception per guest connection is a large share of
/// what a connection costs the gateway. P/Invoke only (no unsafe code): struct sockaddr_in is built as bytes.
/// </summary>
internal static partial class HostSocket
{
    private const int EinProgress = 115;
    private const int Eintr = 4;
    private const ushort AfInet = 2;

    /// <summary>Outcome of <see cref="StartConnect"/>.</summary>
    public enum ConnectStart
    {
        Connected,
        InProgress,
        Failed,
    }

    /// <summary>
    /// Starts connecting a non-blocking IPv4 stream socket to <paramref name="address"/>:<paramref name="port"/>
    /// (host byte order). On <see cref="ConnectStart.Failed"/>, <paramref name="error"/> says why.
    /// A loopback connect has finished by the time connect(2) returns EINPROGRESS (the listener's SYN-ACK is processed
    /// from the socket's backlog as the call releases it), so it is asked once more: a second connect(2) on a socket
    /// whose handshake is done returns 0 (net/ipv4/af_inet.c, __inet_stream_connect). The guest's SYN-ACK then leaves in
    /// the same turn as its SYN came, rather than after another trip through epoll.
    /// </summary>
    public static ConnectStart StartConnect(Socket socket, uint address, ushort port, out string? error)
    {
        // struct sockaddr_in (ip(7)): sa_family_t (native order), in_port_t and in_addr (network order), 8 zero bytes.
        Span<byte> sa = stackalloc byte[16];
        sa.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(sa, AfInet);
        BinaryPrimitives.WriteUInt16BigEndian(sa.Slice(2), port);
        BinaryPrimitives.WriteUInt32BigEndian(sa.Slice(4), address);
        while (true)
        {
            if (connect(socket.SafeHandle, sa, sa.Length) == 0)
            {
                error = null;
                return ConnectStart.Connected;
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno == Eintr)
            {
                continue;
            }
            if (errno == EinProgress)
            {
                error = null;
                return (address >> 24) == 127 && connect(socket.SafeHandle, sa, sa.Length) == 0 ? ConnectStart.Connected : ConnectStart.InProgress;
            }
            error = Marshal.GetPInvokeErrorMessage(errno);
            return ConnectStart.Failed;
        }
    }

    /// <summary>The local port of a bound or connecting IPv4 socket (getsockname(2)), 0 when it has none.</summary>
    public static int LocalPort(Socket socket)
    {
        // .NET's Socket.LocalEndPoint is null for a socket that was connected by the P/Invoke above.
        Span<byte> sa = stackalloc byte[16];
        int length = sa.Length;
        return getsockname(socket.SafeHandle, sa, ref length) == 0 && length >= 4 ? BinaryPrimitives.ReadUInt16BigEndian(sa.Slice(2)) : 0;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int getsockname(SafeSocketHandle fd, Span<byte> address, ref int length);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int connect(SafeSocketHandle fd, ReadOnlySpan<byte> address, int length);
}
