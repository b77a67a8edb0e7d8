using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Boot;

/// <summary>
/// Decompressed kernels on disk, so a repeat boot of the same bzImage skips decompression:
/// <c>$XDG_CACHE_HOME/kit/vmlinux/&lt;xxh128 of the whole bzImage&gt;.elf</c> (or ~/.cache). XxHash128, not SHA: it is
/// not a security boundary (the user's own cache directory) and loading OpenSSL would cost more than it saves. Files
/// are written to a temporary name and renamed (a reader never sees half a file); only the newest
/// <see cref="Keep"/> are kept. A file is trusted only after the ELF checks pass again and its length matches the
/// size the bzImage recorded; anything else is deleted and rebuilt.
/// </summary>
public sealed class KernelCache(string directory, int keep = 4)
{
    public string Directory { get; } = directory;

    public int Keep { get; } = keep;

    /// <summary>The default directory, or null when neither XDG_CACHE_HOME nor HOME is set.</summary>
    public static string? DefaultDirectory()
    {
        string? root = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        if (string.IsNullOrEmpty(root) || !Path.IsPathRooted(root))
        {
            string? home = Environment.GetEnvironmentVariable("HOME");
            if (string.IsNullOrEmpty(home))
            {
                return null;
            }
            root = Path.Combine(home, ".cache");
        }
        return Path.Combine(root, "kit", "vmlinux");
    }

    public static string Key(ReadOnlySpan<byte> bzImage) => Convert.ToHexStringLower(XxHash128.Hash(bzImage));

    public string PathFor(string key) => Path.Combine(Directory, key + ".elf");

    /// <summary>Opens the cached kernel for <paramref name="key"/> if it is there and sound; deletes it when it is
    /// not (short, corrupt headers, wrong length). The caller owns the handle.</summary>
    public bool TryOpen(string key, ulong expectedLength, out SafeFileHandle? handle, out KernelElf? elf, out string reason)
    {
        handle = null;
        elf = null;
        string path = PathFor(key);
        SafeFileHandle? file = null;
        try
        {
            file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read | FileShare.Delete);
            if (!KernelElf.TryRead(file, out elf, out reason) || (ulong)RandomAccess.GetLength(file) != expectedLength)
            {
                reason = reason.Length == 0 ? "length differs from the size the bzImage records" : reason;
                file.Dispose();
                TryDelete(path);
                elf = null;
                return false;
            }
            handle = file;
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            file?.Dispose();
            reason = e is FileNotFoundException or DirectoryNotFoundException ? "not cached" : e.Message;
            return false;
        }
    }

    /// <summary>Writes <paramref name="vmlinux"/> under <paramref name="key"/> atomically (temporary file, then
    /// rename), then drops all but the newest <see cref="Keep"/> entries. Never throws: a cache that can not be
    /// written only costs the next boot a decompression.</summary>
    public bool TryStore(string key, ReadOnlySpan<byte> vmlinux, out string reason)
    {
        string path = PathFor(key);
        string temp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            using (SafeFileHandle file = File.OpenHandle(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None,
                       FileOptions.None, vmlinux.Length))
            {
                RandomAccess.Write(file, vmlinux, 0);
                RandomAccess.FlushToDisk(file); // the rename must not publish a file whose data is not on disk yet
            }
            File.Move(temp, path, overwrite: true);
            Prune();
            reason = "";
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temp);
            reason = e.Message;
            return false;
        }
    }

    private void Prune()
    {
        var entries = new DirectoryInfo(Directory).GetFiles("*.elf");
        if (entries.Length <= Keep)
        {
            return;
        }
        foreach (FileInfo old in entries.OrderByDescending(f => f.LastWriteTimeUtc).Skip(Keep))
        {
            TryDelete(old.FullName);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Another boot may hold or replace it; the next one retries.
        }
    }
}
