using System.Buffers;
using System.Text;
using System.Text.Unicode;

namespace Kit.NineP.Protocol;

/// <summary>
/// 9P strings are counted bytes (intro(5): "a two-byte count followed by that many bytes"), not text: a Linux host
/// file name is any byte string without '/' and NUL, and a client must be able to walk every name a directory read
/// listed. Strings are carried in .NET <see cref="string"/>s losslessly: valid UTF-8 decodes as usual, and each byte
/// of a sequence that is not valid UTF-8 becomes one lone low surrogate U+DC80..U+DCFF (the "surrogateescape" idea of
/// Python's PEP 383). No valid UTF-8 decodes to a lone surrogate, so the mapping is one-to-one and
/// <see cref="GetBytes"/> gives back exactly the bytes that were decoded.
/// </summary>
public static class NineString
{
    private const char EscapeFirst = '\uDC80', EscapeLast = '\uDCFF';

    /// <summary>The string for 9P string bytes; never fails.</summary>
    public static string Decode(ReadOnlySpan<byte> bytes)
    {
        if (Utf8.IsValid(bytes))
        {
            return Encoding.UTF8.GetString(bytes);
        }
        var text = new StringBuilder(bytes.Length);
        while (!bytes.IsEmpty)
        {
            if (Rune.DecodeFromUtf8(bytes, out Rune rune, out int consumed) == OperationStatus.Done)
            {
                text.Append(rune.ToString());
            }
            else
            {
                // Invalid bytes are never ASCII, so each one escapes to U+DC80..U+DCFF.
                for (int i = 0; i < consumed; i++)
                {
                    text.Append((char)(0xDC00 | bytes[i]));
                }
            }
            bytes = bytes[consumed..];
        }
        return text.ToString();
    }

    /// <summary>Whether <paramref name="s"/> is text (it holds no escaped byte): what a UTF-8-only backend can store.</summary>
    public static bool IsText(string s) => s.AsSpan().IndexOfAnyInRange(EscapeFirst, EscapeLast) < 0 || !HasEscape(s);

    /// <summary>The number of bytes <see cref="GetBytes"/> writes for <paramref name="s"/>.</summary>
    public static int GetByteCount(string s) =>
        s.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0 ? Encoding.UTF8.GetByteCount(s) : Count(s, [], write: false);

    /// <summary>Writes the 9P bytes of <paramref name="s"/> (exactly <see cref="GetByteCount"/> of them) into <paramref name="into"/>.</summary>
    public static int GetBytes(string s, Span<byte> into) =>
        s.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0 ? Encoding.UTF8.GetBytes(s, into) : Count(s, into, write: true);

    /// <summary>The bytes of <paramref name="s"/> followed by a NUL: a C path argument for the host's system calls.</summary>
    public static byte[] ToCString(string s)
    {
        byte[] bytes = new byte[GetByteCount(s) + 1];
        GetBytes(s, bytes);
        return bytes;
    }

    private static bool HasEscape(string s)
    {
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                i++;
            }
            else if (s[i] is >= EscapeFirst and <= EscapeLast)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Counts (and, with a buffer, writes) the bytes of a string that holds surrogates.</summary>
    private static int Count(string s, Span<byte> into, bool write)
    {
        int n = 0;
        Span<byte> scratch = stackalloc byte[4];
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            int length;
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                length = new Rune(c, s[++i]).EncodeToUtf8(scratch);
            }
            else if (c is >= EscapeFirst and <= EscapeLast)
            {
                scratch[0] = (byte)(c & 0xFF);
                length = 1;
            }
            else if (char.IsSurrogate(c))
            {
                // A lone surrogate that is not an escape has no bytes of its own: U+FFFD, as UTF-8 encoders write it.
                length = Rune.ReplacementChar.EncodeToUtf8(scratch);
            }
            else
            {
                length = new Rune(c).EncodeToUtf8(scratch);
            }
            if (write)
            {
                scratch[..length].CopyTo(into[n..]);
            }
            n += length;
        }
        return n;
    }
}
