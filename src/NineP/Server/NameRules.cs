using Kit.NineP.Protocol;
using Kit.NineP.Vfs;

namespace Kit.NineP.Server;

/// <summary>
/// The checks every backend gets on a name the client sends, whatever the dialect: the one place they are written,
/// so the DataKit tree and the host directory refuse the same names with the same errors.
/// </summary>
public static class NameRules
{
    /// <summary>NAME_MAX: the longest name Linux (and so v9fs) hands over, in bytes (Tstatfs says so too).</summary>
    public const int MaxNameBytes = 255;

    /// <summary>
    /// A name that becomes (or names) one directory entry: Tcreate, Tlcreate, Tmkdir, Tsymlink, Tmknod, Tlink,
    /// Trename(at), Tunlinkat, Twstat's new name. intro(5): a name never holds '/', and "." and ".." are not entries
    /// one may create or remove; NUL ends a C string, so the host would see a shorter name than the client sent.
    /// </summary>
    public static string CheckEntry(string name) => EntryError(name) is { } e ? throw e : name;

    /// <summary>One Twalk element (see <see cref="WalkError"/>).</summary>
    public static string CheckWalk(string name) => WalkError(name) is { } e ? throw e : name;

    /// <inheritdoc cref="CheckEntry"/>
    public static VfsException? EntryError(string name) =>
        name.Length == 0 || name == "." || name == ".." || name.Contains('/', StringComparison.Ordinal) || name.Contains('\0', StringComparison.Ordinal)
            ? new VfsException(Errno.EINVAL, $"Invalid name \"{name}\"")
            : LengthError(name);

    /// <summary>
    /// The error for one Twalk element, or null. walk(5): ".." is the parent (the root's is the root), which the
    /// server does itself; "." is not a 9P name (a client walks zero names to clone a fid), so it is refused like an
    /// empty name, '/' or NUL.
    /// </summary>
    public static VfsException? WalkError(string name) =>
        name == ".." ? null
        : name.Length == 0 || name == "." || name.Contains('/', StringComparison.Ordinal) || name.Contains('\0', StringComparison.Ordinal)
            ? new VfsException(Errno.EINVAL, $"'{name}' is not valid in 9p")
            : LengthError(name);

    /// <summary>
    /// For a backend that stores names as text (the DataKit tree's git entries): a name that is not valid UTF-8
    /// (<see cref="NineString"/> carries such names losslessly) cannot be stored as it was sent, so it is refused.
    /// </summary>
    public static VfsException? TextError(string name) =>
        NineString.IsText(name) ? null : new VfsException(Errno.EINVAL, "Name is not valid UTF-8");

    private static VfsException? LengthError(string name) =>
        name.Length <= MaxNameBytes / 3 || NineString.GetByteCount(name) <= MaxNameBytes
            ? null
            : new VfsException(Errno.ENAMETOOLONG, "File name too long");
}
