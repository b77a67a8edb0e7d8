using System.Runtime.InteropServices;
using Kit.NineP.Protocol;

namespace Kit.HyperKit.HostFs;

/// <summary>
/// The libc calls the host-directory server needs: everything is relative to a directory file descriptor
/// (openat, mkdirat, unlinkat, renameat, ...) so a name never resolves outside the exported tree. Every call
/// returns -1 and sets errno on failure; buffers are passed as <c>ref byte</c> (pinned by the marshaller, no
/// unsafe code here). Paths are passed as the exact bytes the 9P client sent (<see cref="NineString"/>), never
/// re-encoded as UTF-8: a host name that is not UTF-8 must reach the host unchanged. Linux x86-64 constants.
/// </summary>
internal static partial class HostCalls
{
    public const int O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_ACCMODE = 3, O_CREAT = 0x40, O_EXCL = 0x80, O_NOCTTY = 0x100,
        O_TRUNC = 0x200, O_APPEND = 0x400, O_NONBLOCK = 0x800, O_DSYNC = 0x1000, O_DIRECT = 0x4000, O_LARGEFILE = 0x8000,
        O_DIRECTORY = 0x10000, O_NOFOLLOW = 0x20000, O_NOATIME = 0x40000, O_CLOEXEC = 0x80000, O_SYNC = 0x101000, O_PATH = 0x200000;

    public const int AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100, AT_REMOVEDIR = 0x200, AT_SYMLINK_FOLLOW = 0x400,
        AT_EMPTY_PATH = 0x1000;

    public const uint S_IFMT = 0xF000, S_IFSOCK = 0xC000, S_IFLNK = 0xA000, S_IFREG = 0x8000, S_IFBLK = 0x6000,
        S_IFDIR = 0x4000, S_IFCHR = 0x2000, S_IFIFO = 0x1000;

    public const int SEEK_SET = 0;
    public const uint STATX_BASIC_STATS = 0x7ff;
    public const long UTIME_NOW = (1L << 30) - 1, UTIME_OMIT = (1L << 30) - 2;

    private const long SYS_getdents64 = 217;

    public static int OpenAt(int dirfd, string path, int flags, uint mode) => OpenAtBytes(dirfd, ref NineString.ToCString(path)[0], flags, mode);

    [LibraryImport("libc", EntryPoint = "openat", SetLastError = true)]
    private static partial int OpenAtBytes(int dirfd, ref byte path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    public static int Statx(int dirfd, string path, int flags, uint mask, ref byte statx) => StatxBytes(dirfd, ref NineString.ToCString(path)[0], flags, mask, ref statx);

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static partial int StatxBytes(int dirfd, ref byte path, int flags, uint mask, ref byte statx);

    [LibraryImport("libc", EntryPoint = "pread64", SetLastError = true)]
    public static partial nint PRead(int fd, ref byte buffer, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "pwrite64", SetLastError = true)]
    public static partial nint PWrite(int fd, ref byte buffer, nuint count, long offset);

    [LibraryImport("libc", EntryPoint = "lseek64", SetLastError = true)]
    public static partial long LSeek(int fd, long offset, int whence);

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long number, int fd, ref byte buffer, nuint count);

    /// <summary>getdents64(2): packed linux_dirent64 {ino u64, off s64, reclen u16, type u8, name NUL-terminated}.</summary>
    public static int GetDents64(int fd, Span<byte> buffer) =>
        (int)Syscall(SYS_getdents64, fd, ref MemoryMarshal.GetReference(buffer), (nuint)buffer.Length);

    public static int MkdirAt(int dirfd, string path, uint mode) => MkdirAtBytes(dirfd, ref NineString.ToCString(path)[0], mode);

    [LibraryImport("libc", EntryPoint = "mkdirat", SetLastError = true)]
    private static partial int MkdirAtBytes(int dirfd, ref byte path, uint mode);

    public static int MknodAt(int dirfd, string path, uint mode, ulong dev) => MknodAtBytes(dirfd, ref NineString.ToCString(path)[0], mode, dev);

    [LibraryImport("libc", EntryPoint = "mknodat", SetLastError = true)]
    private static partial int MknodAtBytes(int dirfd, ref byte path, uint mode, ulong dev);

    public static int SymlinkAt(string target, int dirfd, string path) => SymlinkAtBytes(ref NineString.ToCString(target)[0], dirfd, ref NineString.ToCString(path)[0]);

    [LibraryImport("libc", EntryPoint = "symlinkat", SetLastError = true)]
    private static partial int SymlinkAtBytes(ref byte target, int dirfd, ref byte path);

    public static nint ReadlinkAt(int dirfd, string path, ref byte buffer, nuint size) => ReadlinkAtBytes(dirfd, ref NineString.ToCString(path)[0], ref buffer, size);

    [LibraryImport("libc", EntryPoint = "readlinkat", SetLastError = true)]
    private static partial nint ReadlinkAtBytes(int dirfd, ref byte path, ref byte buffer, nuint size);

    public static int LinkAt(int olddirfd, string oldpath, int newdirfd, string newpath, int flags) => LinkAtBytes(olddirfd, ref NineString.ToCString(oldpath)[0], newdirfd, ref NineString.ToCString(newpath)[0], flags);

    [LibraryImport("libc", EntryPoint = "linkat", SetLastError = true)]
    private static partial int LinkAtBytes(int olddirfd, ref byte oldpath, int newdirfd, ref byte newpath, int flags);

    public static int UnlinkAt(int dirfd, string path, int flags) => UnlinkAtBytes(dirfd, ref NineString.ToCString(path)[0], flags);

    [LibraryImport("libc", EntryPoint = "unlinkat", SetLastError = true)]
    private static partial int UnlinkAtBytes(int dirfd, ref byte path, int flags);

    public static int RenameAt(int olddirfd, string oldpath, int newdirfd, string newpath) => RenameAtBytes(olddirfd, ref NineString.ToCString(oldpath)[0], newdirfd, ref NineString.ToCString(newpath)[0]);

    [LibraryImport("libc", EntryPoint = "renameat", SetLastError = true)]
    private static partial int RenameAtBytes(int olddirfd, ref byte oldpath, int newdirfd, ref byte newpath);

    public static int FchownAt(int dirfd, string path, uint uid, uint gid, int flags) => FchownAtBytes(dirfd, ref NineString.ToCString(path)[0], uid, gid, flags);

    [LibraryImport("libc", EntryPoint = "fchownat", SetLastError = true)]
    private static partial int FchownAtBytes(int dirfd, ref byte path, uint uid, uint gid, int flags);

    public static int FchmodAt(int dirfd, string path, uint mode, int flags) => FchmodAtBytes(dirfd, ref NineString.ToCString(path)[0], mode, flags);

    [LibraryImport("libc", EntryPoint = "fchmodat", SetLastError = true)]
    private static partial int FchmodAtBytes(int dirfd, ref byte path, uint mode, int flags);

    public const int F_DUPFD_CLOEXEC = 1030;

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int cmd, int arg);

    [LibraryImport("libc", EntryPoint = "ftruncate64", SetLastError = true)]
    public static partial int Ftruncate(int fd, long length);

    /// <summary>utimensat(2) with two struct timespec {sec s64, nsec s64} in <paramref name="times"/> (32 bytes).</summary>
    public static int UtimensAt(int dirfd, string path, ref long times, int flags) => UtimensAtBytes(dirfd, ref NineString.ToCString(path)[0], ref times, flags);

    [LibraryImport("libc", EntryPoint = "utimensat", SetLastError = true)]
    private static partial int UtimensAtBytes(int dirfd, ref byte path, ref long times, int flags);

    [LibraryImport("libc", EntryPoint = "fstatfs64", SetLastError = true)]
    public static partial int FStatFs(int fd, ref byte statfs);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSync(int fd);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(int fd);

    public static int Errno => Marshal.GetLastPInvokeError();

    /// <summary>The path through which an O_PATH descriptor can be reopened for I/O without another name lookup.</summary>
    public static string ProcFd(int fd) => "/proc/self/fd/" + fd.ToString(System.Globalization.CultureInfo.InvariantCulture);
}
