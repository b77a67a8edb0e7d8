using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// SO_REUSEADDR alone, for TCP listeners. .NET's <see cref="SocketOptionName.ReuseAddress"/> also sets SO_REUSEPORT on
/// Linux, and SO_REUSEPORT lets any later socket of the same user bind the same address and port: a second
/// <c>kit data serve</c> on a busy port said "serving" and the kernel split new connections between two stores. SO_REUSEADDR
/// by itself only lets a listener rebind a port whose old connections are still in TIME_WAIT (socket(7)); a port
/// something listens on stays taken, and bind fails with EADDRINUSE.
/// </summary>
public static partial class ReuseAddress
{
    // asm-generic/socket.h, which x86-64 and arm64 share.
    private const int SOL_SOCKET = 1, SO_REUSEADDR = 2;

    /// <summary>Sets SO_REUSEADDR (and not SO_REUSEPORT) on <paramref name="socket"/>; call it before bind.</summary>
    /// <exception cref="SocketException">setsockopt failed.</exception>
    public static void Enable(Socket socket)
    {
        int one = 1;
        if (SetSockOpt(socket.SafeHandle, SOL_SOCKET, SO_REUSEADDR, ref one, sizeof(int)) != 0)
        {
            throw new SocketException(Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>True when <paramref name="e"/> is bind's EADDRINUSE: something else holds the address.</summary>
    public static bool IsAddressInUse(Exception e) => e is SocketException { SocketErrorCode: SocketError.AddressAlreadyInUse };

    [LibraryImport("libc", EntryPoint = "setsockopt", SetLastError = true)]
    private static partial int SetSockOpt(SafeHandle fd, int level, int name, ref int value, uint length);
}
