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
