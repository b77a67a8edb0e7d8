using System.Runtime.InteropServices;

namespace Kit.Linux;

/// <summary>
/// The host terminal for <c>kit exec -t</c> and <c>kit shell</c>: raw mode while the guest's PTY does the line editing
/// and signals (Ctrl-C reaches the guest as a byte, as over ssh), and the window size to pass on (TIOCGWINSZ).
/// termios(3), ioctl_tty(2); the struct is 60 bytes on Linux (glibc's struct termios), treated as opaque but for
/// cfmakeraw.
/// </summary>
public static partial class Terminal
{
    private const int TCSANOW = 0;
    private const ulong TIOCGWINSZ = 0x5413;

    public static bool IsTerminal(int fd) => IsATty(fd) == 1;

    /// <summary>Rows and columns of the terminal on <paramref name="fd"/>; (0, 0) when it is none.</summary>
    public static (ushort Rows, ushort Cols) Size(int fd = 1)
    {
        Span<ushort> winsize = stackalloc ushort[4];
        return Ioctl(fd, TIOCGWINSZ, ref MemoryMarshal.GetReference(winsize)) == 0 ? (winsize[0], winsize[1]) : ((ushort)0, (ushort)0);
    }

    /// <summary>Puts <paramref name="fd"/> in raw mode; disposing restores what it was.</summary>
    public static IDisposable? Raw(int fd = 0)
    {
        byte[] saved = new byte[64];
        if (TcGetAttr(fd, saved) != 0)
        {
            return null;
        }
        byte[] raw = (byte[])saved.Clone();
        CfMakeRaw(raw);
        if (TcSetAttr(fd, TCSANOW, raw) != 0)
        {
            return null;
        }
        return new Restore(fd, saved);
    }

    private sealed class Restore(int fd, byte[] saved) : IDisposable
    {
        public void Dispose() => TcSetAttr(fd, TCSANOW, saved);
    }

    [LibraryImport("libc", EntryPoint = "isatty")]
    private static partial int IsATty(int fd);

    [LibraryImport("libc", EntryPoint = "tcgetattr")]
    private static partial int TcGetAttr(int fd, [Out] byte[] termios);

    [LibraryImport("libc", EntryPoint = "tcsetattr")]
    private static partial int TcSetAttr(int fd, int actions, byte[] termios);

    [LibraryImport("libc", EntryPoint = "cfmakeraw")]
    private static partial void CfMakeRaw(byte[] termios);

    [LibraryImport("libc", EntryPoint = "ioctl")]
    private static partial int Ioctl(int fd, ulong request, ref ushort winsize);
}
