using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>
    /// dup2(2): makes <paramref name="newFd"/> a copy of <paramref name="oldFd"/> (closing what it was). A daemon uses it
    /// to put its log on standard output and error and /dev/null on standard input, so the terminal or pipe it was
    /// started from is let go.
    /// </summary>
    [LibraryImport("libc", EntryPoint = "dup2", SetLastError = true)]
    public static partial int Dup2(int oldFd, int newFd);

    public const int O_APPEND = 0x400;
}
