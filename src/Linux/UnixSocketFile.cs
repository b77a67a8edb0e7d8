using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// The file a Unix stream or datagram listener binds. bind(2) fails with EADDRINUSE when anything is at the path, and
/// the habit of deleting "whatever is there" first turns a listener's path into a way to delete any file the process
/// may delete (a mistyped <c>--listen-9p unix:~/.bashrc</c>). So a listener may remove only a stale socket (a socket
/// file nobody accepts on), refuses everything else, and on close removes its socket only while the inode at the path
/// is still the one it bound.
/// </summary>
public static partial class UnixSocketFile
{
    private const int S_IFMT = 0xF000, S_IFSOCK = 0xC000;
    private const ushort AF_UNIX = 1;
    private const int SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0x80000;

    /// <summary>A socket file's identity (st_dev, st_ino), taken right after bind.</summary>
    public readonly record struct Identity(ulong Device, ulong Inode);

    /// <summary>
    /// Makes <paramref name="path"/> free for bind: nothing there is fine; a socket that refuses connections is stale
    /// and is removed; a socket something listens on, or anything that is not a socket, is refused.
    /// </summary>
    /// <exception cref="IOException">The path is in use or is not a socket; the message says which.</exception>
    public static void PrepareForBind(string path)
    {
        if (!TryLstat(path, out int mode, out _))
        {
            return;
        }
        if ((mode & S_IFMT) != S_IFSOCK)
        {
            throw new IOException($"{path} exists and is not a socket; refusing to replace it");
        }
        if (IsLive(path))
        {
            throw new IOException($"address in use: {path} is a socket another process listens on");
        }
        File.Delete(path);
    }

    /// <summary>The identity of the socket file at <paramref name="path"/>, or null when none is there.</summary>
    public static Identity? Identify(string path) =>
        TryLstat(path, out int mode, out Identity id) && (mode & S_IFMT) == S_IFSOCK ? id : null;

    /// <summary>
    /// A new Unix socket of <paramref name="type"/> bound to <paramref name="path"/> after <see cref="PrepareForBind"/>.
    /// Disposing <paramref name="binding"/> removes the socket file, unless something else has taken its place since.
    /// </summary>
    /// <remarks>
    /// The socket is made and bound here rather than with <see cref="Socket.Bind"/>: a .NET socket bound to a path
    /// unlinks that path when it is disposed, whatever is there by then. Wrapped from its descriptor, it does not.
    /// </remarks>
    /// <exception cref="IOException">The path is in use, is not a socket, or cannot be bound.</exception>
    public static Socket Bind(string path, SocketType type, out Binding binding)
    {
        PrepareForBind(path);
        // struct sockaddr_un (unix(7)): sa_family_t sun_family; char sun_path[108], NUL-terminated.
        Span<byte> address = stackalloc byte[2 + 108];
        address.Clear();
        BinaryPrimitives.WriteUInt16LittleEndian(address, AF_UNIX);
        int length = System.Text.Encoding.UTF8.GetByteCount(path);
        if (length == 0 || length >= 108)
        {
            throw new IOException($"{path}: a Unix socket path must be 1 to 107 bytes long");
        }
        System.Text.Encoding.UTF8.GetBytes(path, address[2..]);
        int fd = NativeSocket(AF_UNIX, (type == SocketType.Dgram ? SOCK_DGRAM : SOCK_STREAM) | SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            throw new IOException($"{path}: socket failed (errno {Marshal.GetLastPInvokeError()})");
        }
        var handle = new SafeSocketHandle(fd, ownsHandle: true);
        if (NativeBind(fd, ref MemoryMarshal.GetReference(address), (uint)(2 + length + 1)) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            throw new IOException($"cannot bind {path} (errno {errno})");
        }
        binding = new Binding(path, Identify(path));
        return new Socket(handle);
    }

    /// <summary>A bound socket file; see <see cref="Bind"/>.</summary>
    public sealed class Binding(string path, Identity? identity) : IDisposable
    {
        private int _disposed;

        public string Path { get; } = path;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0 || identity is null || Identify(Path) != identity)
            {
                return;
            }
            try
            {
                File.Delete(Path);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
            }
        }
    }

    private static bool IsLive(string path)
    {
        foreach (SocketType type in (ReadOnlySpan<SocketType>)[SocketType.Stream, SocketType.Dgram])
        {
            using var probe = new Socket(AddressFamily.Unix, type, ProtocolType.Unspecified);
            try
            {
                probe.Connect(new UnixDomainSocketEndPoint(path));
                return true;
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ProtocolType)
            {
                // EPROTOTYPE: a socket of the other type is bound there; try that type.
            }
            catch (SocketException)
            {
                // ECONNREFUSED: nobody accepts on it. Stale.
                return false;
            }
        }
        return false;
    }

    private static bool TryLstat(string path, out int mode, out Identity identity)
    {
        // struct stat on x86-64 and arm64 Linux is at most 144 bytes; st_dev and st_ino lead it on both, st_mode
        // follows at 24 (x86-64: after st_nlink) or 16 (arm64).
        Span<byte> stat = stackalloc byte[256];
        if (Lstat(path, ref MemoryMarshal.GetReference(stat)) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            mode = 0;
            identity = default;
            return errno == 2 ? false : throw new IOException($"{path}: lstat failed (errno {errno})");
        }
        int modeOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 24 : 16;
        mode = BinaryPrimitives.ReadInt32LittleEndian(stat[modeOffset..]);
        identity = new Identity(BinaryPrimitives.ReadUInt64LittleEndian(stat), BinaryPrimitives.ReadUInt64LittleEndian(stat[8..]));
        return true;
    }

    [LibraryImport("libc", EntryPoint = "socket", SetLastError = true)]
    private static partial int NativeSocket(int domain, int type, int protocol);

    [LibraryImport("libc", EntryPoint = "bind", SetLastError = true)]
    private static partial int NativeBind(int fd, ref byte address, uint length);

    [LibraryImport("libc", EntryPoint = "lstat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Lstat(string path, ref byte stat);
}
