namespace Kit.DataKit.Store;

/// <summary>
/// Which remote URLs the operator allows (<c>kit data serve --allow-remote PREFIX</c>, repeatable; none by default).
/// Without it any 9P client, or a guest through its DataKit mount, could make the server fetch a root-only
/// repository or an internal URL as the server's user.
/// </summary>
/// <remarks>
/// A URL is allowed when it is well formed (<see cref="Problem"/>) and starts with an allowed prefix at a path
/// boundary: it equals the prefix, or the prefix ends in '/' or ':', or the URL goes on with '/'. So
/// <c>file:///srv/repo</c> allows <c>file:///srv/repo/sub</c> but not <c>file:///srv/repo-evil</c>, and
/// <c>http://host</c> does not allow <c>http://host@evil/</c> or <c>http://host.evil/</c>. '.' and '..' segments,
/// '%' escapes, whitespace and control characters are refused outright rather than normalised, so what is compared
/// is what git is given. A plain absolute path and its <c>file://</c> form are the same location.
/// </remarks>
public sealed class RemotePolicy
{
    public static readonly RemotePolicy None = new([]);

    private static readonly string[] Schemes = ["file://", "git://", "http://", "https://", "ssh://"];
    private readonly string[] _prefixes;

    /// <exception cref="ArgumentException">A prefix is not a URL this policy could ever allow (the reason says why).</exception>
    public RemotePolicy(IEnumerable<string> prefixes)
    {
        var list = new List<string>();
        foreach (string p in prefixes)
        {
            if (Problem(p) is string problem)
            {
                throw new ArgumentException($"--allow-remote {p}: {problem}");
            }
            list.Add(Canonical(p));
        }
        _prefixes = [.. list];
    }

    public IReadOnlyList<string> Prefixes => _prefixes;

    /// <summary>Null when <paramref name="url"/> names an allowed remote; otherwise why not.</summary>
    public string? Refusal(string url)
    {
        if (Problem(url) is string problem)
        {
            return problem;
        }
        string u = Canonical(url);
        foreach (string p in _prefixes)
        {
            if (u.StartsWith(p, StringComparison.Ordinal)
                && (u.Length == p.Length || p[^1] is '/' or ':' || u[p.Length] == '/'))
            {
                return null;
            }
        }
        return _prefixes.Length == 0
            ? "no remotes are allowed (kit data serve --allow-remote PREFIX)"
            : "not under any --allow-remote prefix";
    }

    /// <summary>
    /// Null if git would read <paramref name="url"/> as a path or a file, git, http(s) or ssh URL with nothing that
    /// could be rewritten on the way; otherwise why not. Checked before any prefix.
    /// </summary>
    public static string? Problem(string url)
    {
        if (url.Length == 0)
        {
            return "empty URL";
        }
        if (url.Length > 4096)
        {
            return "URL too long";
        }
        foreach (char c in url)
        {
            if (c <= ' ' || c == 0x7f || c is '\\' or '%' or '?' or '#' or '\'' or '"' or '`')
            {
                return $"character 0x{(int)c:x2} is not allowed in a remote URL";
            }
        }
        if (url[0] == '-')
        {
            return "a URL may not start with '-'";
        }
        // git's "transport::address" form runs the helper git-remote-<transport> (ext:: runs any command, fd:: uses
        // the server's descriptors): refused always, whatever the prefixes say.
        int helper = url.IndexOf("::", StringComparison.Ordinal);
        if (helper >= 0 && url.AsSpan(0, helper).IndexOfAnyExcept("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.") < 0)
        {
            return "remote helper URLs (transport::address, such as ext:: and fd::) are not allowed";
        }
        string path;
        int scheme = url.IndexOf("://", StringComparison.Ordinal);
        if (scheme >= 0)
        {
            if (Array.FindIndex(Schemes, s => url.StartsWith(s, StringComparison.Ordinal)) < 0)
            {
                return "only file://, git://, http://, https:// and ssh:// URLs, absolute paths and host:path are allowed";
            }
            path = url[(scheme + 3)..];
        }
        else if (url[0] == '/')
        {
            path = url;
        }
        else
        {
            // scp-like [user@]host:path (git: a colon before any slash). Anything else would be a path relative to
            // the server's working directory.
            int colon = url.IndexOf(':');
            int slash = url.IndexOf('/');
            if (colon <= 0 || (slash >= 0 && slash < colon))
            {
                return "a relative path is not allowed: use an absolute path or a URL";
            }
            path = url[(colon + 1)..];
        }
        foreach (string segment in path.Split('/'))
        {
            if (segment is "." or "..")
            {
                return "'.' and '..' path segments are not allowed";
            }
        }
        return null;
    }

    /// <summary>One spelling per location: an absolute path compares as its file:// URL.</summary>
    private static string Canonical(string url) => url[0] == '/' ? "file://" + url : url;
}
