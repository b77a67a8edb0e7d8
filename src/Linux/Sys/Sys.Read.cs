using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>One read(2) into <paramref name="buffer"/>: the byte count, 0 at end of file, or -1 with errno.</summary>
    public static nint Read(int fd, Span<byte> buffer) => ReadNative(fd, buffer, (nuint)buffer.Length);

    /// <summary>As <see cref="Read(int, Span{byte})"/>; throws <see cref="ObjectDisposedException"/> once the handle is closed.</summary>
    public static nint Read(SafeHandle fd, Span<byte> buffer) => ReadNative(fd, buffer, (nuint)buffer.Length);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadNative(int fd, Span<byte> buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    private static partial nint ReadNative(SafeHandle fd, Span<byte> buffer, nuint count);
}
