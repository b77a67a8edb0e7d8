using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>One write(2) of <paramref name="data"/>: the byte count written (perhaps fewer), or -1 with errno.</summary>
    public static nint Write(int fd, ReadOnlySpan<byte> data) => WriteNative(fd, data, (nuint)data.Length);

    /// <summary>As <see cref="Write(int, ReadOnlySpan{byte})"/>; throws <see cref="ObjectDisposedException"/> once the handle is closed.</summary>
    public static nint Write(SafeHandle fd, ReadOnlySpan<byte> data) => WriteNative(fd, data, (nuint)data.Length);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteNative(int fd, ReadOnlySpan<byte> data, nuint count);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint WriteNative(SafeHandle fd, ReadOnlySpan<byte> data, nuint count);
}
