using System.Text;

namespace Kit.Testing;

/// <summary>Small text helpers for failure messages and shell scripts.</summary>
public static class Text
{
    /// <summary>The last <paramref name="maxChars"/> characters of <paramref name="text"/>, cut at a line start.</summary>
    public static string Tail(string text, int maxChars = 4000)
    {
        if (text.Length <= maxChars)
        {
            return text;
        }
        int start = text.Length - maxChars;
        int newline = text.IndexOf('\n', start);
        return "[...]\n" + text[(newline >= 0 && newline < text.Length - 1 ? newline + 1 : start)..];
    }

    /// <summary>
    /// One output line made safe for test reports: ANSI escape sequences (the guest's BIOS and kernel clear the
    /// screen) and '\r' removed, other control characters shown as '?'. xunit's XML result writer produces an
    /// empty file when test output holds characters XML 1.0 forbids, such as ESC.
    /// </summary>
    public static string Printable(string line)
    {
        StringBuilder? clean = null;
        for (int i = 0; i < line.Length; i++)
        {
            char c = line[i];
            if (c >= ' ' && c != '\x7f' && !char.IsSurrogate(c) && c != '\uFFFE' && c != '\uFFFF' || c == '\t')
            {
                clean?.Append(c);
                continue;
            }
            clean ??= new StringBuilder(line.Length).Append(line, 0, i);
            if (c == '\x1b')
            {
                i = SkipEscape(line, i);
            }
            else if (char.IsSurrogate(c) && i + 1 < line.Length && char.IsSurrogatePair(c, line[i + 1]))
            {
                clean.Append(c).Append(line[++i]);
            }
            else if (c != '\r')
            {
                clean.Append('?');
            }
        }
        return clean?.ToString() ?? line;
    }

    /// <summary>Index of the last character of the escape sequence starting at <paramref name="esc"/>.</summary>
    private static int SkipEscape(string line, int esc)
    {
        if (esc + 1 >= line.Length)
        {
            return esc;
        }
        if (line[esc + 1] != '[')
        {
            return esc + 1; // two-character escape such as ESC c (reset)
        }
        int i = esc + 2;
        while (i < line.Length && line[i] >= 0x30 && line[i] <= 0x3F)
        {
            i++; // CSI parameter bytes: digits ; ? etc.
        }
        while (i < line.Length && line[i] >= 0x20 && line[i] <= 0x2F)
        {
            i++; // intermediate bytes
        }
        return Math.Min(i, line.Length - 1); // final byte
    }

    /// <summary>Quotes one word for POSIX sh (single quotes; embedded quotes closed and escaped).</summary>
    public static string ShellQuote(string word)
    {
        if (word.Length > 0 && word.All(c => char.IsAsciiLetterOrDigit(c) || "/._-=:,+@%".Contains(c)))
        {
            return word;
        }
        return "'" + word.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
    }

    /// <summary>Joins words into one sh command line, each quoted as needed.</summary>
    public static string ShellJoin(IEnumerable<string> words)
    {
        var line = new StringBuilder();
        foreach (string word in words)
        {
            if (line.Length > 0)
            {
                line.Append(' ');
            }
            line.Append(ShellQuote(word));
        }
        return line.ToString();
    }
}
