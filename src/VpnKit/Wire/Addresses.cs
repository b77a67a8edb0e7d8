using System.Buffers.Binary;
using System.Globalization;

namespace Kit.VpnKit.Wire;

/// <summary>A 48-bit Ethernet address held in the low bits of a ulong, so it compares and hashes for free.</summary>
internal readonly record struct MacAddress(ulong Value)
{
    public static readonly MacAddress Broadcast = new(0xFFFF_FFFF_FFFFUL);
    public static readonly MacAddress Zero = new(0);

    public static MacAddress Read(ReadOnlySpan<byte> b)
        => new(((ulong)BinaryPrimitives.ReadUInt16BigEndian(b) << 32) | BinaryPrimitives.ReadUInt32BigEndian(b.Slice(2)));

    public void Write(Span<byte> b)
    {
        BinaryPrimitives.WriteUInt16BigEndian(b, (ushort)(Value >> 32));
        BinaryPrimitives.WriteUInt32BigEndian(b.Slice(2), (uint)Value);
    }

    /// <summary>Group bit (IEEE 802 §8.2): broadcast and multicast.</summary>
    public bool IsMulticast => ((Value >> 40) & 1) != 0;

    public static MacAddress Parse(string text)
    {
        string[] parts = text.Split(':');
        if (parts.Length != 6)
        {
            throw new FormatException($"not a MAC address: {text}");
        }
        ulong v = 0;
        foreach (string p in parts)
        {
            v = (v << 8) | byte.Parse(p, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        }
        return new MacAddress(v);
    }

    public override string ToString()
        => string.Create(CultureInfo.InvariantCulture,
            $"{(byte)(Value >> 40):x2}:{(byte)(Value >> 32):x2}:{(byte)(Value >> 24):x2}:{(byte)(Value >> 16):x2}:{(byte)(Value >> 8):x2}:{(byte)Value:x2}");
}

/// <summary>IPv4 addresses are plain uints in host order inside the stack: cheap keys, cheap arithmetic.</summary>
internal static class Ip4
{
    public static uint Parse(string text)
    {
        if (!TryParse(text, out uint v))
        {
            throw new FormatException($"not an IPv4 address: {text}");
        }
        return v;
    }

    public static bool TryParse(string text, out uint value)
    {
        value = 0;
        string[] parts = text.Split('.');
        if (parts.Length != 4)
        {
            return false;
        }
        foreach (string p in parts)
        {
            if (!byte.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out byte b))
            {
                return false;
            }
            value = (value << 8) | b;
        }
        return true;
    }

    public static string Format(uint v)
        => string.Create(CultureInfo.InvariantCulture, $"{v >> 24}.{(v >> 16) & 0xFF}.{(v >> 8) & 0xFF}.{v & 0xFF}");

    public static uint FromBytes(byte a, byte b, byte c, byte d) => ((uint)a << 24) | ((uint)b << 16) | ((uint)c << 8) | d;
}
