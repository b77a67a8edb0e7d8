using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>mallopt(3)'s M_ARENA_MAX (malloc.h): the most arenas glibc's malloc creates.</summary>
    public const int M_ARENA_MAX = -8;

    /// <summary>mallopt(3)'s M_MMAP_THRESHOLD (malloc.h): blocks this large or larger get their own mapping.</summary>
    public const int M_MMAP_THRESHOLD = -3;

    /// <summary>mallopt(3): sets one of malloc's tunables; 1 on success, 0 on error (no errno).</summary>
    [LibraryImport("libc", EntryPoint = "mallopt")]
    public static partial int Mallopt(int param, int value);
}
