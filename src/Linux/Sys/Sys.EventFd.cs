using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    // EFD_CLOEXEC and EFD_NONBLOCK are O_CLOEXEC and O_NONBLOCK (eventfd(2)).
    public const int EFD_CLOEXEC = O_CLOEXEC, EFD_NONBLOCK = O_NONBLOCK;

    /// <summary>eventfd(2): a new eventfd with counter <paramref name="initialValue"/>, or -1 with errno.</summary>
    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFd(uint initialValue, int flags);

    /// <summary>Adds 1 to an eventfd's counter (wakes whoever polls it); false if the write failed.</summary>
    public static bool SignalEventFd(int fd) => Write(fd, One()) == 8;

    /// <summary>As <see cref="SignalEventFd(int)"/>; throws <see cref="ObjectDisposedException"/> once the handle is closed.</summary>
    public static bool SignalEventFd(SafeHandle fd) => Write(fd, One()) == 8;

    /// <summary>Reads and clears an eventfd's counter: its value, or 0 when it was not signalled (a non-blocking fd).</summary>
    public static ulong ReadEventFd(int fd)
    {
        Span<byte> value = stackalloc byte[8];
        return Read(fd, value) == 8 ? BinaryPrimitives.ReadUInt64LittleEndian(value) : 0;
    }

    /// <summary>As <see cref="ReadEventFd(int)"/>; throws <see cref="ObjectDisposedException"/> once the handle is closed.</summary>
    public static ulong ReadEventFd(SafeHandle fd)
    {
        Span<byte> value = stackalloc byte[8];
        return Read(fd, value) == 8 ? BinaryPrimitives.ReadUInt64LittleEndian(value) : 0;
    }

    // The eventfd counter is a host-order uint64 (eventfd(2)); Linux on x86-64 and arm64 is little-endian.
    private static ReadOnlySpan<byte> One() => [1, 0, 0, 0, 0, 0, 0, 0];
}
