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

/// <summary>
/// An IPv4 or an IPv6 address in one 128-bit value, so that one TCP table, one TCP engine and one NAT serve both
/// families (issue 18, NAT66): an IPv6 address as it is, an IPv4 address IPv4-mapped (::ffff:a.b.c.d, RFC 4291
/// §2.5.5.2), as a dual-stack socket API shows it. The two never collide: the gateway refuses IPv6 packets to or from a
/// mapped address (a guest speaks only from link-local and in-prefix sources, and a mapped destination is not carried).
/// Only the IP header is written by family; everything above it is the same code.
/// </summary>
internal readonly record struct IpAddr(UInt128 Value)
{
    private static readonly UInt128 MappedPrefix = (UInt128)0xFFFF << 32;

    public static IpAddr V4(uint address) => new(MappedPrefix | address);

    public static IpAddr V6(UInt128 address) => new(address);

    /// <summary>::ffff:0:0/96: an IPv4 address.</summary>
    public bool IsV4 => (Value >> 32) == 0xFFFF;

    /// <summary>The IPv4 address (host order); meaningful only when <see cref="IsV4"/>.</summary>
    public uint Ipv4 => (uint)Value;

    public System.Net.IPAddress ToIPAddress()
    {
        Span<byte> b = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128BigEndian(b, Value);
        return IsV4 ? new System.Net.IPAddress(b.Slice(12)) : new System.Net.IPAddress(b);
    }

    public static IpAddr From(System.Net.IPAddress address)
    {
        Span<byte> b = stackalloc byte[16];
        if (!address.TryWriteBytes(b, out int n))
        {
            return default;
        }
        return n == 4 ? V4(BinaryPrimitives.ReadUInt32BigEndian(b)) : new IpAddr(BinaryPrimitives.ReadUInt128BigEndian(b));
    }

    public override string ToString() => IsV4 ? Ip4.Format(Ipv4) : ToIPAddress().ToString();
}
