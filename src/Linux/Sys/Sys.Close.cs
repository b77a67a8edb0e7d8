using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>close(2): 0, or -1 with errno. The descriptor is gone either way (close(2), "Dealing with error returns").</summary>
    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    /// <summary>Closes every non-negative descriptor in <paramref name="fds"/>, ignoring errors.</summary>
    public static void CloseAll(ReadOnlySpan<int> fds)
    {
        foreach (int fd in fds)
        {
            if (fd >= 0)
            {
                _ = Close(fd);
            }
        }
    }
}
