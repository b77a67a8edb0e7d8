using System.Runtime.InteropServices;

namespace Kit.Linux;

public static partial class Sys
{
    /// <summary>memfd_create(2)'s MFD_CLOEXEC.</summary>
    public const uint MFD_CLOEXEC = 1;

    /// <summary>memfd_create(2): an anonymous file in memory (guest RAM shared with a vhost-user backend, an embedded library), or -1 with errno.</summary>
    [LibraryImport("libc", EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);
}
