using System.Reflection;
using System.Runtime.InteropServices;
using Kit.Linux;

namespace Kit.Cli;

/// <summary>
/// libgit2 for a kit that was copied alone (issue 14: one file). The library is embedded in kit; when it is not found
/// beside the executable, it is loaded from memory: its bytes go into a memfd (never a file another user could swap
/// or a noexec mount could refuse), a private mkdtemp directory gets one symlink to it under the name LibGit2Sharp
/// looks for (<c>GlobalSettings.NativeLibraryPath</c>, <c>git2-HASH.so</c>), the library is loaded, and the directory
/// is removed again at once. Nothing stays on disk.
/// </summary>
internal static class NativeGit
{
    private static readonly Lock Gate = new();
    private static bool s_ready;

    /// <summary>
    /// The OpenSSL libraries libgit2 loads at run time for SHA-1 and SHA-256 (the LibGit2Sharp.NativeBinaries build uses
    /// OpenSSL "dynamic": without one, hashing the first object calls a null function pointer and kills the process).
    /// </summary>
    private static readonly string[] OpenSsl = ["libssl.so.3", "libssl.so.1.1", "libssl.so.1.0.0", "libssl.so.10"];

    /// <summary>Makes libgit2 loadable; call before the first LibGit2Sharp use. Throws <see cref="CliException"/> if it cannot.</summary>
    public static void Prepare()
    {
        lock (Gate)
        {
            if (s_ready)
            {
                return;
            }
            if (!OpenSsl.Any(name => NativeLibrary.TryLoad(name, out _)))
            {
                throw new CliException("DataKit needs OpenSSL's libssl (libgit2 hashes with it): install libssl3 (Debian: apt-get install libssl3)");
            }
            s_ready = true;
            Assembly kit = typeof(NativeGit).Assembly;
            string? resource = kit.GetManifestResourceNames().FirstOrDefault(n => n.StartsWith("native/libgit2-", StringComparison.Ordinal));
            if (resource is null)
            {
                return; // a build without the embedded copy: LibGit2Sharp's own search
            }
            string file = resource["native/".Length..];
            string dir = AppContext.BaseDirectory;
            if (File.Exists(Path.Combine(dir, file)) || File.Exists(Path.Combine(dir, "runtimes", "linux-x64", "native", file)))
            {
                return; // beside kit (a publish directory, or the build tree): LibGit2Sharp finds it
            }
            LoadFromMemory(kit, resource, file["lib".Length..]);
        }
    }

    private static void LoadFromMemory(Assembly kit, string resource, string name)
    {
        int fd = Sys.MemfdCreate("libgit2", Sys.MFD_CLOEXEC);
        if (fd < 0)
        {
            throw new CliException($"cannot load the embedded libgit2: memfd_create: {Sys.ErrnoText(Sys.LastErrno)}");
        }
        DirectoryInfo? link = null;
        try
        {
            using (Stream bytes = kit.GetManifestResourceStream(resource)!)
            using (var memfd = new FileStream(new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, ownsHandle: false), FileAccess.Write))
            {
                bytes.CopyTo(memfd);
            }
            link = Directory.CreateTempSubdirectory("kit-libgit2-");
            File.CreateSymbolicLink(Path.Combine(link.FullName, name), $"/proc/{Environment.ProcessId}/fd/{fd}");
            LibGit2Sharp.GlobalSettings.NativeLibraryPath = link.FullName;
            // The first call into libgit2 loads it (LibGit2Sharp's NativeMethods), while the link is there.
            _ = LibGit2Sharp.GlobalSettings.Version.Features;
            // The same library again (dlopen finds it loaded), for DataKit's libgit2 options: once the link is gone,
            // LibGit2Sharp's resolver could not find it a second time.
            Kit.DataKit.Store.GitStore.LibGit2Handle = NativeLibrary.Load(Path.Combine(link.FullName, name));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or DllNotFoundException or TypeInitializationException)
        {
            throw new CliException($"cannot load the embedded libgit2: {(e.InnerException ?? e).Message}");
        }
        finally
        {
            link?.Delete(recursive: true);
            // The loaded library keeps its own mapping of the memfd.
            Sys.Close(fd);
        }
    }
}
