using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>DHCP message types (RFC 2132 §9.6) and option codes we use.</summary>
internal static class DhcpOption
{
    public const byte Pad = 0;
    public const byte SubnetMask = 1;
    public const byte Router = 3;
    public const byte DnsServers = 6;
    public const byte DomainName = 15;
    public const byte BroadcastAddress = 28;
    public const byte InterfaceMtu = 26;
    public const byte RequestedIp = 50;
    public const byte LeaseTime = 51;
    public const byte MessageType = 53;
    public const byte ServerId = 54;
    public const byte ParameterList = 55;
    public const byte RenewalTime = 58;
    public const byte RebindingTime = 59;
    public const byte ClientId = 61;
    public const byte DomainSearch = 119;
    public const byte End = 255;

    public const byte Discover = 1;
    public const byte Offer = 2;
    public const byte Request = 3;
    public const byte Decline = 4;
    public const byte Ack = 5;
    public const byte Nak = 6;
    public const byte Release = 7;
    public const byte Inform = 8;
}

/// <summary>
/// A BOOTP/DHCP message (RFC 2131 §2): 236 fixed bytes, the magic cookie 99.130.83.99, then options.
/// </summary>
internal readonly ref struct DhcpMessage
{
    public const int FixedLength = 236;
    public const int OptionsOffset = FixedLength + 4;
    public const uint MagicCookie = 0x63825363;
    private readonly ReadOnlySpan<byte> _b;

    private DhcpMessage(ReadOnlySpan<byte> b) => _b = b;

    public static bool TryParse(ReadOnlySpan<byte> p, out DhcpMessage result)
    {
        result = new DhcpMessage(p);
        return p.Length >= OptionsOffset && BinaryPrimitives.ReadUInt32BigEndian(p.Slice(FixedLength)) == MagicCookie;
    }

    public byte Op => _b[0];
    public byte HardwareType => _b[1];
    public byte HardwareLength => _b[2];
    public uint TransactionId => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(4));
    public ushort Flags => BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(10));
    public uint ClientIp => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(12));
    public uint YourIp => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(16));
    public uint GatewayIp => BinaryPrimitives.ReadUInt32BigEndian(_b.Slice(24));
    public MacAddress ClientMac => MacAddress.Read(_b.Slice(28));
    public ReadOnlySpan<byte> OptionBytes => _b.Slice(OptionsOffset);

    /// <summary>Finds an option's value; false if absent or the list is malformed before it.</summary>
    public bool TryGetOption(byte code, out ReadOnlySpan<byte> value)
    {
        ReadOnlySpan<byte> o = OptionBytes;
        int i = 0;
        while (i < o.Length)
        {
            byte c = o[i];
            if (c == DhcpOption.End)
            {
                break;
            }
            if (c == DhcpOption.Pad)
            {
                i++;
                continue;
            }
            if (i + 1 >= o.Length)
            {
                break;
            }
            int len = o[i + 1];
            if (i + 2 + len > o.Length)
            {
                break;
            }
            if (c == code)
            {
                value = o.Slice(i + 2, len);
                return true;
            }
            i += 2 + len;
        }
        value = default;
        return false;
    }

    public byte MessageType => TryGetOption(DhcpOption.MessageType, out ReadOnlySpan<byte> v) && v.Length == 1 ? v[0] : (byte)0;

    public uint RequestedIp => TryGetOption(DhcpOption.RequestedIp, out ReadOnlySpan<byte> v) && v.Length == 4 ? BinaryPrimitives.ReadUInt32BigEndian(v) : 0;

    public uint ServerId => TryGetOption(DhcpOption.ServerId, out ReadOnlySpan<byte> v) && v.Length == 4 ? BinaryPrimitives.ReadUInt32BigEndian(v) : 0;
}

/// <summary>Builds a DHCP reply in place: the fixed part, then options appended one by one.</summary>
internal ref struct DhcpWriter
{
    private readonly Span<byte> _b;
    private int _pos;

    public DhcpWriter(Span<byte> buffer, uint xid, ushort flags, uint yourIp, uint serverIp, MacAddress clientMac)
    {
        _b = buffer;
        buffer.Slice(0, DhcpMessage.OptionsOffset).Clear();
        buffer[0] = 2; // BOOTREPLY
        buffer[1] = 1; // Ethernet
        buffer[2] = 6;
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(4), xid);
        BinaryPrimitives.WriteUInt16BigEndian(buffer.Slice(10), flags);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(16), yourIp);
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(20), serverIp);
        clientMac.Write(buffer.Slice(28));
        BinaryPrimitives.WriteUInt32BigEndian(buffer.Slice(DhcpMessage.FixedLength), DhcpMessage.MagicCookie);
        _pos = DhcpMessage.OptionsOffset;
    }

    public void Option(byte code, scoped ReadOnlySpan<byte> value)
    {
        _b[_pos] = code;
        _b[_pos + 1] = (byte)value.Length;
        value.CopyTo(_b.Slice(_pos + 2));
        _pos += 2 + value.Length;
    }

    public void Option(byte code, byte value)
    {
        Span<byte> v = [value];
        Option(code, v);
    }

    public void OptionUInt32(byte code, uint value)
    {
        Span<byte> v = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(v, value);
        Option(code, v);
    }

    public void OptionUInt16(byte code, ushort value)
    {
        Span<byte> v = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(v, value);
        Option(code, v);
    }

    /// <summary>Ends the option list and pads to the BOOTP minimum of 300 bytes some clients still expect.</summary>
    public int Finish()
    {
        _b[_pos++] = DhcpOption.End;
        while (_pos < 300)
        {
            _b[_pos++] = 0;
        }
        return _pos;
    }
}
