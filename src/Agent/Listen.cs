using System.Buffers.Binary;
using System.Globalization;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace Kit.Agent;

/// <summary>
/// The listening socket, made and accepted on with system calls rather than System.Net.Sockets.Socket: .NET on Linux
/// refuses address families it does not know (AF_VSOCK) in its Socket constructor and SocketAddress, and an accepted
/// socket of such a family comes out not "connected", so NetworkStream refuses it too. Accepted descriptors are wrapped
/// in a Socket (for its async I/O) and read and written through <see cref="SocketStream"/>. Unix sockets take the same
/// path, so the tests, which listen on one, exercise the code the guest runs.
/// </summary>
internal sealed class Listen
{
    private const int Backlog = 64;

    /// <summary>VMADDR_CID_ANY.</summary>
    private const uint AnyCid = 0xFFFFFFFF;

    private readonly int _fd;

    private Listen(int fd)
    {
        _fd = fd;
    }

    /// <summary><c>vsock:PORT</c> or <c>unix:PATH</c>.</summary>
    /// <exception cref="IOException">The socket cannot be made, bound or listened on; the message says why.</exception>
    public static Listen Open(string spec)
    {
        if (spec.StartsWith("vsock:", StringComparison.Ordinal))
        {
            if (!uint.TryParse(spec.AsSpan(6), NumberStyles.None, CultureInfo.InvariantCulture, out uint port))
            {
                throw new ArgumentException($"bad vsock port in {spec}");
            }
            return new Listen(BindAndListen(Native.AF_VSOCK, VsockAddress(port), spec));
        }
        if (spec.StartsWith("unix:", StringComparison.Ordinal) && spec.Length > 5)
        {
            // Nothing at the path is removed first (a mistyped path must not delete a file): bind fails instead.
            byte[] path = Encoding.UTF8.GetBytes(spec[5..]);
            // struct sockaddr_un: family, then sun_path[108] NUL-terminated.
            if (path.Length > 107)
            {
                throw new ArgumentException($"socket path too long: {spec[5..]}");
            }
            Span<byte> address = stackalloc byte[110];
            address.Clear();
            BinaryPrimitives.WriteUInt16LittleEndian(address, Native.AF_UNIX);
            path.CopyTo(address[2..]);
            return new Listen(BindAndListen(Native.AF_UNIX, address[..(2 + path.Length + 1)], spec));
        }
        throw new ArgumentException($"--listen takes vsock:PORT or unix:PATH, not {spec}");
    }

    /// <summary>
    /// struct sockaddr_vm (linux/vm_sockets.h): { u16 family; u16 reserved; u32 port; u32 cid; u8 flags; u8 zero[3]; },
    /// for VMADDR_CID_ANY (whatever CID the guest has).
    /// </summary>
    internal static byte[] VsockAddress(uint port)
    {
        byte[] address = new byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(address, Native.AF_VSOCK);
        BinaryPrimitives.WriteUInt32LittleEndian(address.AsSpan(4), port);
        BinaryPrimitives.WriteUInt32LittleEndian(address.AsSpan(8), AnyCid);
        return address;
    }

    /// <summary>
    /// The next connection (blocking; the agent's main thread does nothing else). Transient failures (an aborted
    /// handshake, out of descriptors) are logged and waited out, never fatal.
    /// </summary>
    public unsafe Socket Accept()
    {
        while (true)
        {
            int fd = Native.Accept4(_fd, null, null, Native.SOCK_CLOEXEC);
            if (fd >= 0)
            {
                return new Socket(new SafeSocketHandle(fd, ownsHandle: true));
            }
            int errno = Marshal.GetLastPInvokeError();
            if (errno is Native.EINTR or Native.ECONNABORTED)
            {
                continue;
            }
            Log.Line($"accept: {Native.ErrorText(errno)}");
            Thread.Sleep(errno is Native.EMFILE or Native.ENFILE or Native.ENOBUFS or Native.ENOMEM ? 100 : 1000);
        }
    }

    private static unsafe int BindAndListen(int family, ReadOnlySpan<byte> address, string spec)
    {
        int fd = Native.Socket(family, Native.SOCK_STREAM | Native.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw new IOException($"socket: {Native.ErrorText(Marshal.GetLastPInvokeError())}");
        }
        fixed (byte* p = address)
        {
            if (Native.Bind(fd, p, address.Length) != 0 || Native.Listen(fd, Backlog) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                _ = Native.Close(fd);
                throw new IOException($"{spec}: {Native.ErrorText(errno)}");
            }
        }
        return fd;
    }
}
