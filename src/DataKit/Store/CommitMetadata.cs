using System.Globalization;
using LibGit2Sharp;

namespace Kit.DataKit.Store;

/// <summary>
/// Parses what a client or an operator says about a commit's author, committer and date: an identity as git writes it
/// ("Name &lt;email&gt;", git-commit(1) --author) and a date either in RFC 3339 (section 5.6) or in git's raw internal
/// form "SECONDS +HHMM" (git-commit(1) "DATE FORMATS", optionally with git's '@' prefix). Parsing never throws: a bad
/// value gives a one-line reason, which the transaction turns into EINVAL.
/// </summary>
public static class CommitMetadata
{
    /// <summary>
    /// Longest accepted identity or date text. A commit header line has no limit in git, but an identity longer than
    /// this is a mistake (a whole file written into <c>author</c>), not a name.
    /// </summary>
    public const int MaxLength = 1024;

    /// <summary>
    /// "Name &lt;email&gt;" as git writes it. Neither part may be empty (git accepts "Name &lt;&gt;", LibGit2Sharp's
    /// Identity does not). Neither may hold '&lt;', '&gt;' or a control character: those would break the header line
    /// (libgit2 refuses angle brackets too, and a newline would end the header early).
    /// </summary>
    public static bool TryParseIdentity(string text, out Identity? identity, out string error)
    {
        identity = null;
        string t = text.Trim();
        if (t.Length > MaxLength)
        {
            error = $"longer than {MaxLength} characters";
            return false;
        }
        int open = t.IndexOf('<', StringComparison.Ordinal);
        if (open < 0 || !t.EndsWith('>'))
        {
            error = "expected \"Name <email>\"";
            return false;
        }
        string name = t[..open].Trim();
        string email = t[(open + 1)..^1].Trim();
        if (name.Length == 0)
        {
            error = "the name is empty (expected \"Name <email>\")";
            return false;
        }
        if (email.Length == 0)
        {
            error = "the email is empty (expected \"Name <email>\")";
            return false;
        }
        if (HasForbidden(name) || HasForbidden(email))
        {
            error = "a name or email may not contain '<', '>' or control characters";
            return false;
        }
        identity = new Identity(name, email);
        error = "";
        return true;
    }

    private static bool HasForbidden(string s)
    {
        foreach (char c in s)
        {
            if (c is '<' or '>' || char.IsControl(c))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// A date in RFC 3339 ("2026-12-07T11:45:00Z", "2026-12-07 12:45:00.5+01:00"; fractions of a second are dropped,
    /// since git stores whole seconds) or git's raw form ("1765107900 +0100", "@1765107900 +0100"). A zone is required
    /// in both: a date without one would silently take the server's local zone. Offsets are limited to ±14:00 (the
    /// widest real zone; LibGit2Sharp's DateTimeOffset allows no more) and a leap second (:60) is refused.
    /// </summary>
    public static bool TryParseDate(string text, out DateTimeOffset date, out string error)
    {
        date = default;
        string t = text.Trim();
        if (t.Length > MaxLength)
        {
            error = $"longer than {MaxLength} characters";
            return false;
        }
        if (t.Length > 0 && (char.IsAsciiDigit(t[0]) && t.Length > 4 && t[4] == '-'))
        {
            return TryParseRfc3339(t, out date, out error);
        }
        return TryParseRaw(t, out date, out error);
    }

    private const string Expected = "expected RFC 3339 (2026-12-07T11:45:00Z) or git's \"SECONDS +HHMM\"";

    private static bool TryParseRaw(string t, out DateTimeOffset date, out string error)
    {
        date = default;
        string s = t.StartsWith('@') ? t[1..] : t;
        int space = s.IndexOf(' ', StringComparison.Ordinal);
        if (space <= 0 || !AllDigits(s.AsSpan(0, space)) || space > 12)
        {
            error = Expected;
            return false;
        }
        string zone = s[(space + 1)..].Trim();
        if (zone.Length != 5 || zone[0] is not ('+' or '-') || !AllDigits(zone.AsSpan(1)))
        {
            error = $"the zone \"{zone}\" is not +HHMM or -HHMM";
            return false;
        }
        long seconds = long.Parse(s.AsSpan(0, space), NumberStyles.None, CultureInfo.InvariantCulture);
        int hours = int.Parse(zone.AsSpan(1, 2), CultureInfo.InvariantCulture);
        int minutes = int.Parse(zone.AsSpan(3, 2), CultureInfo.InvariantCulture);
        if (!TryOffset(zone[0] == '-', hours, minutes, out TimeSpan offset, out error))
        {
            return false;
        }
        // DateTimeOffset ends at 9999-12-31T23:59:59Z.
        if (seconds > 253_402_300_799L)
        {
            error = "the time is beyond the year 9999";
            return false;
        }
        date = DateTimeOffset.FromUnixTimeSeconds(seconds).ToOffset(offset);
        return true;
    }

    private static bool TryParseRfc3339(string t, out DateTimeOffset date, out string error)
    {
        date = default;
        // full-date: 2026-12-07 (10), "T"/"t"/" " (RFC 3339 §5.6's NOTE allows a space), partial-time: 11:45:00 (8).
        if (t.Length < 19 || t[4] != '-' || t[7] != '-' || t[10] is not ('T' or 't' or ' ') || t[13] != ':' || t[16] != ':'
            || !AllDigits(t.AsSpan(0, 4)) || !AllDigits(t.AsSpan(5, 2)) || !AllDigits(t.AsSpan(8, 2))
            || !AllDigits(t.AsSpan(11, 2)) || !AllDigits(t.AsSpan(14, 2)) || !AllDigits(t.AsSpan(17, 2)))
        {
            error = Expected;
            return false;
        }
        int i = 19;
        if (i < t.Length && t[i] == '.')
        {
            int start = ++i;
            while (i < t.Length && char.IsAsciiDigit(t[i]))
            {
                i++;
            }
            if (i == start)
            {
                error = Expected;
                return false;
            }
        }
        string zone = t[i..];
        TimeSpan offset;
        if (zone is "Z" or "z")
        {
            offset = TimeSpan.Zero;
        }
        else if (zone.Length == 6 && zone[0] is ('+' or '-') && zone[3] == ':' && AllDigits(zone.AsSpan(1, 2)) && AllDigits(zone.AsSpan(4, 2)))
        {
            if (!TryOffset(zone[0] == '-', Int(zone, 1, 2), Int(zone, 4, 2), out offset, out error))
            {
                return false;
            }
        }
        else
        {
            error = $"the zone \"{zone}\" is not Z or +HH:MM (RFC 3339 requires one)";
            return false;
        }
        int year = Int(t, 0, 4), month = Int(t, 5, 2), day = Int(t, 8, 2), hour = Int(t, 11, 2), minute = Int(t, 14, 2), second = Int(t, 17, 2);
        if (year < 1 || month is < 1 or > 12 || day < 1 || day > DateTime.DaysInMonth(year, month) || hour > 23 || minute > 59 || second > 59)
        {
            error = second == 60 ? "leap seconds (:60) cannot be stored" : $"\"{t}\" is not a real date and time";
            return false;
        }
        try
        {
            date = new DateTimeOffset(year, month, day, hour, minute, second, offset);
        }
        catch (ArgumentOutOfRangeException)
        {
            // 0001-01-01T00:00:00+01:00 would be before year 1 in UTC.
            error = "the time is out of range";
            return false;
        }
        error = "";
        return true;
    }

    private static bool TryOffset(bool negative, int hours, int minutes, out TimeSpan offset, out string error)
    {
        offset = default;
        if (minutes > 59 || hours * 60 + minutes > 14 * 60)
        {
            error = "the zone offset must be within ±14:00";
            return false;
        }
        offset = new TimeSpan(hours, minutes, 0);
        if (negative)
        {
            offset = -offset;
        }
        error = "";
        return true;
    }

    private static int Int(string s, int start, int length) => int.Parse(s.AsSpan(start, length), NumberStyles.None, CultureInfo.InvariantCulture);

    private static bool AllDigits(ReadOnlySpan<char> s)
    {
        foreach (char c in s)
        {
            if (!char.IsAsciiDigit(c))
            {
                return false;
            }
        }
        return s.Length > 0;
    }
}
