using Kit.NineP.Protocol;

namespace Kit.NineP.Vfs;

/// <summary>What a node is; decides qid type, stat mode and Linux file type.</summary>
public enum NodeKind : byte
{
    File,
    Directory,
    Symlink,
}

/// <summary>
/// A file system error with a Linux errno (sent in .u's Rerror and .L's Rlerror) and a message (sent as .u/legacy's
/// ename; DataKit's clients parse some of these texts, so file systems choose them, not the server).
/// </summary>
public sealed class VfsException(uint errno, string message, Exception? inner = null) : Exception(message, inner)
{
    public uint Errno { get; } = errno;
}

/// <summary>Attributes of a node at one moment.</summary>
public readonly record struct NodeInfo(ulong Length, bool Executable = false, uint QidVersion = 0);

/// <summary>A file, directory or symlink. <see cref="Path"/> is the qid path: stable and unique for the session.</summary>
public interface INode
{
    string Name { get; }
    ulong Path { get; }
    NodeKind Kind { get; }

    ValueTask<NodeInfo> GetInfoAsync(CancellationToken ct);

    /// <summary>chmod: only the executable bit has meaning here.</summary>
    ValueTask SetExecutableAsync(bool executable, CancellationToken ct) =>
        throw new VfsException(Errno.EPERM, "Operation not permitted");
}

/// <summary>A directory. Removal and rename are asked of the parent, which owns the name.</summary>
public interface IDirectory : INode
{
    /// <summary>The child, or null when there is none (ENOENT).</summary>
    ValueTask<INode?> LookupAsync(string name, CancellationToken ct);

    ValueTask<IReadOnlyList<INode>> ListAsync(CancellationToken ct);

    ValueTask<INode> CreateFileAsync(string name, bool executable, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Directory is read-only");

    ValueTask<INode> CreateDirectoryAsync(string name, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Directory is read-only");

    ValueTask<INode> CreateSymlinkAsync(string name, string target, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Directory is read-only");

    ValueTask RemoveAsync(string name, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Directory is read-only");

    ValueTask RenameAsync(string oldName, string newName, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Directory is read-only");
}

/// <summary>A regular file or a symlink.</summary>
public interface IFile : INode
{
    ValueTask<IOpenFile> OpenAsync(bool write, CancellationToken ct);

    ValueTask TruncateAsync(ulong length, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Read-only file");

    ValueTask<string> ReadLinkAsync(CancellationToken ct) =>
        throw new VfsException(Errno.EINVAL, "Not a symlink");

    /// <summary>9P2000.u chmod with DMSYMLINK: turn the file into a symlink to <paramref name="target"/>.</summary>
    ValueTask MakeSymlinkAsync(string target, CancellationToken ct) =>
        throw new VfsException(Errno.EPERM, "Operation not permitted");
}

/// <summary>An open file. Reads may block (streams); the token is cancelled by Tflush or by the connection closing.</summary>
public interface IOpenFile
{
    ValueTask<int> ReadAsync(ulong offset, Memory<byte> buffer, CancellationToken ct);

    ValueTask<int> WriteAsync(ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct) =>
        throw new VfsException(Errno.EROFS, "Read-only file");

    /// <summary>Called once on clunk or when the connection goes away: release watchers and buffers.</summary>
    void Close()
    {
    }
}

/// <summary>One client connection's view of the file system: DataKit builds a fresh root per connection.</summary>
public interface IFileSystemSession : IAsyncDisposable
{
    /// <summary>Tattach: the root for <paramref name="aname"/> ("" or "/" is the whole tree).</summary>
    ValueTask<IDirectory> AttachAsync(string uname, string aname, CancellationToken ct);
}

/// <summary>Helpers for the common errors.</summary>
public static class VfsErrors
{
    public static VfsException NotFound() => new(Errno.ENOENT, "No such file or directory");
    public static VfsException Exists() => new(Errno.EEXIST, "Already exists");
    public static VfsException IsDirectory() => new(Errno.EISDIR, "Is a directory");
    public static VfsException NotDirectory() => new(Errno.ENOTDIR, "Is not a directory");
    public static VfsException ReadOnlyFile() => new(Errno.EROFS, "Read-only file");
    public static VfsException ReadOnlyDirectory() => new(Errno.EROFS, "Directory is read-only");
    public static VfsException NotPermitted() => new(Errno.EPERM, "Operation not permitted");
}

/// <summary>FNV-1a 64 of a string: stable qid paths for synthetic nodes named by a path.</summary>
public static class QidPaths
{
    public static ulong Of(string kind, string path)
    {
        ulong h = 14695981039346656037UL;
        foreach (char c in kind)
        {
            h = (h ^ c) * 1099511628211UL;
        }
        h = (h ^ 0xff) * 1099511628211UL;
        foreach (char c in path)
        {
            h = (h ^ c) * 1099511628211UL;
        }
        return h;
    }
}
