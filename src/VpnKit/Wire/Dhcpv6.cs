using System.Buffers.Binary;

namespace Kit.VpnKit.Wire;

/// <summary>DHCPv6 message types and option codes used by a stateless server (RFC 8415 §7.3, §21; RFC 3646 §3-4).</summary>
internal static class Dhcpv6
{
    public const int ClientPort = 546;
    public const int ServerPort = 547;

    public const byte Solicit = 1;
    public const byte Reply = 7;
    public const byte InformationRequest = 11;

    public const ushort OptionClientId = 1;
    public const ushort OptionServerId = 2;
    public const ushort OptionRequestOption = 6;
    public const ushort OptionDnsServers = 23;
    public const ushort OptionDomainList = 24;

    /// <summary>All_DHCP_Relay_Agents_and_Servers (RFC 8415 §7.1).</summary>
    public static readonly UInt128 AllServers = new(0xFF02_0000_0000_0000UL, 0x0000_0000_0001_0002UL);
}

/// <summary>A DHCPv6 client/server message view (RFC 8415 §8): type, transaction id, options.</summary>
internal readonly ref struct Dhcpv6Message
{
    public const int HeaderLength = 4;
    private readonly ReadOnlySpan<byte> _b;

    private Dhcpv6Message(ReadOnlySpan<byte> b) => _b = b;

    /// <summary>False when the message is shorter than its header or an option runs past the end.</summary>
    public static bool TryParse(ReadOnlySpan<byte> p, out Dhcpv6Message result)
    {
        result = new Dhcpv6Message(p);
        if (p.Length < HeaderLength)
        {
            return false;
        }
        int at = HeaderLength;
        while (at + 4 <= p.Length)
        {
            at += 4 + BinaryPrimitives.ReadUInt16BigEndian(p.Slice(at + 2));
        }
        return at == p.Length;
    }

    public byte Type => _b[0];
    public uint TransactionId => ((uint)_b[1] << 16) | ((uint)_b[2] << 8) | _b[3];

    /// <summary>The first option with <paramref name="code"/>; options were bounds-checked by TryParse.</summary>
    public bool TryGetOption(ushort code, out ReadOnlySpan<byte> value)
    {
        int at = HeaderLength;
        while (at + 4 <= _b.Length)
        {
            int length = BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(at + 2));
            if (BinaryPrimitives.ReadUInt16BigEndian(_b.Slice(at)) == code)
            {
                value = _b.Slice(at + 4, length);
                return true;
            }
            at += 4 + length;
        }
        value = default;
        return false;
    }

    /// <summary>
    /// A Reply (RFC 8415 §18.3.6) to an Information-request: the client's id echoed, the server's DUID-LL, the DNS
    /// servers and the domain search list (RFC 3646). Returns the length written.
    /// </summary>
    public static int WriteReply(Span<byte> b, uint transactionId, ReadOnlySpan<byte> clientId, MacAddress serverMac, ReadOnlySpan<UInt128> dnsServers,
        IReadOnlyList<string> domains)
    {
        b[0] = Dhcpv6.Reply;
        b[1] = (byte)(transactionId >> 16);
        b[2] = (byte)(transactionId >> 8);
        b[3] = (byte)transactionId;
        int at = HeaderLength;
        if (!clientId.IsEmpty)
        {
            at += WriteOption(b.Slice(at), Dhcpv6.OptionClientId, clientId);
        }
        // DUID-LL (RFC 8415 §11.4): type 3, hardware type 1 (Ethernet), the MAC.
        Span<byte> duid = stackalloc byte[10];
        BinaryPrimitives.WriteUInt16BigEndian(duid, 3);
        BinaryPrimitives.WriteUInt16BigEndian(duid.Slice(2), 1);
        serverMac.Write(duid.Slice(4));
        at += WriteOption(b.Slice(at), Dhcpv6.OptionServerId, duid);
        if (dnsServers.Length > 0)
        {
            BinaryPrimitives.WriteUInt16BigEndian(b.Slice(at), Dhcpv6.OptionDnsServers);
            BinaryPrimitives.WriteUInt16BigEndian(b.Slice(at + 2), (ushort)(16 * dnsServers.Length));
            for (int i = 0; i < dnsServers.Length; i++)
            {
                Ip6.Write(b.Slice(at + 4 + (16 * i)), dnsServers[i]);
            }
            at += 4 + (16 * dnsServers.Length);
        }
        if (domains.Count > 0)
        {
            int length = 0;
            foreach (string d in domains)
            {
                length += DnsName.Write(b.Slice(at + 4 + length), d);
            }
            BinaryPrimitives.WriteUInt16BigEndian(b.Slice(at), Dhcpv6.OptionDomainList);
            BinaryPrimitives.WriteUInt16BigEndian(b.Slice(at + 2), (ushort)length);
            at += 4 + length;
        }
        return at;
    }

    private static int WriteOption(Span<byte> b, ushort code, ReadOnlySpan<byte> value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(b, code);
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(2), (ushort)value.Length);
        value.CopyTo(b.Slice(4));
        return 4 + value.Length;
    }
}
