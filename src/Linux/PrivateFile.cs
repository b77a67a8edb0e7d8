using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Kit.Linux;

/// <summary>
/// Files only their owner may read, opened without following a symlink. A packet capture holds every byte the guest
/// sent and received (passwords, tokens, cookies): it must not be world-readable, and a symlink planted at its path
/// (by anyone who can write the directory, /tmp for instance) must not turn kit, often root, into a way to truncate and
/// overwrite the file the link points at.
/// </summary>
public static partial class PrivateFile
{
    private const int ELOOP = 40, ENXIO = 6;
    private const int S_IFMT = 0xF000, S_IFREG = 0x8000;

    /// <summary>
    /// Creates or truncates <paramref name="path"/> for writing with mode 0600: <c>open(2)</c> with
    /// O_CREAT|O_TRUNC|O_NOFOLLOW (a symlink as the last component is ELOOP, and nothing is touched), O_NONBLOCK so a
    /// FIFO without a reader fails (ENXIO) rather than hangs. An existing file must be a regular file and is made 0600
    /// (O_CREAT's mode applies only to a new file).
    /// </summary>
    /// <exception cref="IOException">The path is a symlink, not a regular file, or cannot be opened; the message says which.</exception>
    public static SafeFileHandle CreateForWrite(string path)
    {
        int fd = Sys.Open(path, Sys.O_WRONLY | Sys.O_CREAT | Sys.O_TRUNC | Sys.O_NOFOLLOW | Sys.O_NONBLOCK | Sys.O_CLOEXEC, 0x180 /* 0600 */);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException(errno switch
            {
                ELOOP => $"{path} is a symbolic link; refusing to write through it",
                ENXIO => $"{path} is a FIFO or socket; refusing to write to it",
                _ => $"{path}: cannot create ({Marshal.GetPInvokeErrorMessage(errno)})",
            });
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        // struct stat: st_mode at 24 on x86-64, 16 on arm64 (see UnixSocketFile.TryLstat).
        Span<byte> stat = stackalloc byte[256];
        int modeOffset = RuntimeInformation.ProcessArchitecture == Architecture.X64 ? 24 : 16;
        if (Fstat(fd, ref MemoryMarshal.GetReference(stat)) != 0 || (BinaryPrimitives.ReadInt32LittleEndian(stat[modeOffset..]) & S_IFMT) != S_IFREG)
        {
            handle.Dispose();
            throw new IOException($"{path} is not a regular file; refusing to write to it");
        }
        if (Fchmod(fd, 0x180) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            handle.Dispose();
            throw new IOException($"{path}: cannot make it private ({Marshal.GetPInvokeErrorMessage(errno)})");
        }
        return handle;
    }

    [LibraryImport("libc", EntryPoint = "fstat", SetLastError = true)]
    private static partial int Fstat(int fd, ref byte stat);

    [LibraryImport("libc", EntryPoint = "fchmod", SetLastError = true)]
    private static partial int Fchmod(int fd, int mode);
}
