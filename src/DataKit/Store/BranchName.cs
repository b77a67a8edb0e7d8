using System.Text;

namespace Kit.DataKit.Store;

/// <summary>
/// Which branch names the store accepts: exactly git's (git-check-ref-format(1) applied to <c>refs/heads/NAME</c>, and
/// <c>git check-ref-format --branch</c>'s own refusals of a leading <c>-</c> and of <c>HEAD</c>), so that every branch
/// DataKit makes can be checked out, pushed and fetched by stock git, and a name git would refuse is turned away with a
/// reason instead of failing later inside libgit2 (a bare EIO). Two refusals go beyond git: the single character
/// <c>@</c> (rule 9 of check-ref-format for a whole refname; <c>git rev-parse @</c> means HEAD) and a component longer
/// than 255 bytes (each component is a file or directory name under refs/heads).
/// </summary>
public static class BranchName
{
    private const int MaxComponentBytes = 255;

    /// <summary>Null when <paramref name="name"/> is a valid branch name, else why it is not (one short clause).</summary>
    public static string? Problem(string name)
    {
        if (name.Length == 0)
        {
            return "it is empty";
        }
        if (name == "HEAD")
        {
            return "HEAD is reserved";
        }
        if (name == "@")
        {
            return "\"@\" alone means HEAD";
        }
        if (name[0] == '-')
        {
            return "it starts with '-'";
        }
        if (name.EndsWith('.'))
        {
            return "it ends with '.'";
        }
        if (name.Contains("..", StringComparison.Ordinal))
        {
            return "it contains \"..\"";
        }
        if (name.Contains("@{", StringComparison.Ordinal))
        {
            return "it contains \"@{\"";
        }
        foreach (char c in name)
        {
            // Rules 3-5 of git-check-ref-format(1): ASCII control characters (below 0x20, and DEL), space, and the
            // characters revision and refspec syntax give a meaning (~ ^ : ? * [ \).
            if (c < 0x20 || c == 0x7F)
            {
                return "it contains a control character";
            }
            if (c is ' ' or '~' or '^' or ':' or '?' or '*' or '[' or '\\')
            {
                return $"it contains '{c}'";
            }
        }
        foreach (string component in name.Split('/'))
        {
            if (component.Length == 0)
            {
                return name.StartsWith('/') ? "it starts with '/'" : name.EndsWith('/') ? "it ends with '/'" : "it contains \"//\"";
            }
            if (component[0] == '.')
            {
                return "a component starts with '.'";
            }
            if (component.EndsWith(".lock", StringComparison.Ordinal))
            {
                return "a component ends with \".lock\"";
            }
            if (Encoding.UTF8.GetByteCount(component) > MaxComponentBytes)
            {
                return $"a component is longer than {MaxComponentBytes} bytes";
            }
        }
        return null;
    }

    public static bool IsValid(string name) => Problem(name) is null;

    /// <summary>The error text for an invalid name: <c>Invalid branch name "NAME": REASON</c>.</summary>
    public static string Message(string name, string problem) => $"Invalid branch name \"{name}\": {problem}";
}
