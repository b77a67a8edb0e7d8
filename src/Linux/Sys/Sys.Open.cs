using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>open(2); <paramref name="mode"/> matters only with O_CREAT. Returns the descriptor, or -1 with errno.</summary>
    public static int Open(string path, int flags, int mode = 0) => OpenNative(path, flags, mode);

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int OpenNative(string path, int flags, int mode);
}
