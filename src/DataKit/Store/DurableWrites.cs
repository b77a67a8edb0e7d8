using System.Reflection;
using System.Runtime.InteropServices;
using Kit.Linux;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// Durable commits (issue 16, item 2): what makes an acknowledged commit survive a power cut, in this order:
/// each new object's bytes, then its name in its fan-out directory, then the ref's bytes, then the ref's name.
/// </summary>
/// <remarks>
/// <para>
/// Objects and refs are synced by libgit2 itself, through its process-wide <c>GIT_OPT_ENABLE_FSYNC_GITDIR</c>
/// (include/git2/common.h; LibGit2Sharp 0.32 does not expose it). With it on, every loose object and every ref goes
/// through git_filebuf_commit: write a temporary file, fsync it, move it into place (p_rename: link(2), else
/// rename(2)), fsync the directory (src/util/filebuf.c; DurableCommitTests checks the order under strace). So the bytes are durable before the name that points at them: a power cut leaves either no
/// object file or a whole one, never the empty file that an unsynced write renamed into place leaves on ext4
/// (delayed allocation), which git fsck reports as corrupt and which libgit2 would later take as "already written"
/// (git_odb_write skips objects that exist) and so reference from new commits.
/// </para>
/// <para>
/// Syncing from the outside afterwards (fsync each new object file before the ref update) was the alternative; it
/// batches better but cannot order bytes before the rename, which libgit2 has already done. Writing loose objects
/// ourselves to batch them was not worth it: measured in docs/benchmarks.md (bench/datakit-durable.sh), libgit2's
/// per-object syncs already commit several times faster than git with core.fsync=all.
/// </para>
/// <para>
/// What libgit2 leaves out, done here: the fan-out directories (objects/00 .. objects/ff) are made once when the store
/// opens and objects/ is synced, so no commit ever depends on an unsynced mkdir (likewise what git init made); a ref in a new subdirectory
/// (refs/heads/a/b) gets its new directories synced; a deleted or renamed ref gets refs/heads synced, as libgit2
/// unlinks without a sync.
/// </para>
/// </remarks>
internal static class DurableWrites
{
    // include/git2/common.h, enum git_libgit2_opt_t: the 20th entry.
    private const int GIT_OPT_ENABLE_FSYNC_GITDIR = 19;

    // A placeholder name that the resolver below maps to the libgit2 LibGit2Sharp loaded (never a file).
    private const string LibGit2 = "kit-datakit-libgit2";

    private static readonly Lock s_gate = new();
    private static bool s_enabled;

    /// <summary>
    /// Turns libgit2's syncing on for the whole process (it is a global libgit2 option): a process that opens one
    /// durable store syncs every store it has. It is never turned off again, so nothing is ever less durable than asked.
    /// </summary>
    public static void EnableLibGit2Fsync()
    {
        lock (s_gate)
        {
            if (s_enabled)
            {
                return;
            }
            // LibGit2Sharp loads libgit2 (and registers its resolver, which Resolve asks) on its first native call.
            _ = GlobalSettings.Version.Features;
            NativeLibrary.SetDllImportResolver(typeof(DurableWrites).Assembly, Resolve);
            if (SetOption(GIT_OPT_ENABLE_FSYNC_GITDIR, 1) != 0)
            {
                throw new IOException("libgit2 refused GIT_OPT_ENABLE_FSYNC_GITDIR");
            }
            s_enabled = true;
        }
    }

    /// <summary>
    /// Makes the store's skeleton durable once, when it opens: the 256 fan-out directories a loose object may go to
    /// (created here if missing, so no commit ever depends on an unsynced mkdir), the files at the top of the git
    /// directory (HEAD and config: the power-cut test found a store whose HEAD was left empty, which git no longer
    /// takes for a repository), and the directories <c>git init</c> may just have made (refs/heads, refs, the git
    /// directory and its parent's entry for it).
    /// </summary>
    public static void PrepareStore(string gitDir)
    {
        foreach (string file in Directory.EnumerateFiles(gitDir))
        {
            Sys.FsyncFile(file);
        }
        string objects = Path.Combine(gitDir, "objects");
        for (int i = 0; i < 256; i++)
        {
            Directory.CreateDirectory(Path.Combine(objects, i.ToString("x2", System.Globalization.CultureInfo.InvariantCulture)));
        }
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(gitDir));
        foreach (string dir in (string[])[objects, Path.Combine(full, "refs", "heads"), Path.Combine(full, "refs"), full, Path.GetDirectoryName(full) ?? "/"])
        {
            if (Directory.Exists(dir))
            {
                Sys.FsyncDirectory(dir);
            }
        }
    }

    /// <summary>
    /// Syncs the directories from <paramref name="refFile"/>'s parent up to <paramref name="stopAt"/> (included):
    /// a ref's name is durable once every directory on its path is.
    /// </summary>
    public static void SyncRefDirectories(string refFile, string stopAt)
    {
        string? dir = Path.GetDirectoryName(refFile);
        while (dir is not null && dir.Length >= stopAt.Length)
        {
            // libgit2 removes a nested ref's directories once empty (refs/heads/a after a/b is deleted): then their
            // parent, synced next, holds the removal.
            if (Directory.Exists(dir))
            {
                Sys.FsyncDirectory(dir);
            }
            if (dir.Length == stopAt.Length)
            {
                break;
            }
            dir = Path.GetDirectoryName(dir);
        }
    }

    // git_libgit2_opts is variadic; on x86-64 and arm64 Linux a call with two int arguments passes them as a fixed
    // call would (LibGit2Sharp declares its own fixed-argument imports of it the same way).
    [DllImport(LibGit2, EntryPoint = "git_libgit2_opts", CallingConvention = CallingConvention.Cdecl)]
    private static extern int SetOption(int option, int value);

    private static IntPtr Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath)
    {
        if (name != LibGit2)
        {
            return IntPtr.Zero;
        }
        if (GitStore.LibGit2Handle != IntPtr.Zero)
        {
            return GitStore.LibGit2Handle;
        }
        // LibGit2Sharp's own resolver (registered for its assembly) knows where its libgit2 is: beside the program or
        // under runtimes/. Its library name is "git2-" and the libgit2 commit it was built from.
        return NativeLibrary.Load("git2-" + GlobalSettings.Version.LibGit2CommitSha, typeof(Repository).Assembly, searchPath);
    }
}
