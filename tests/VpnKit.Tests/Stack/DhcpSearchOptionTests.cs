using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using PacketDotNet;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>DHCP option 119, domain search (RFC 3397): offers and acks carry the option-15 domain as the search list.</summary>
public sealed class DhcpSearchOptionTests
{
    private readonly CapturingSink _sink = new();
    private readonly Gateway _gw;

    public DhcpSearchOptionTests() => _gw = new Gateway(new GatewayOptions { IsnSecret = 1 }, _sink, new RecordingFlows());

    [Fact]
    public void OfferAndAckCarryTheDomainNameAsTheSearchList()
    {
        // Golden bytes: code 119, length 13, then "localdomain" in DNS wire format (RFC 1035 §3.1): 11, the label, 0.
        byte[] golden = Convert.FromHexString("770D" + "0B" + "6C6F63616C646F6D61696E" + "00");
        _gw.Receive(G.Dhcp(DhcpOption.Discover, 1, G.GuestMac), 0);
        byte[] offer = Reply();
        _gw.Receive(G.Dhcp(DhcpOption.Request, 2, G.GuestMac, requested: G.Guest, server: G.Gateway), 0);
        byte[] ack = Reply();
        foreach ((byte[] reply, byte type) in new[] { (offer, DhcpOption.Offer), (ack, DhcpOption.Ack) })
        {
            Dictionary<byte, byte[]> options = RawOptions(reply);
            Assert.Equal([type], options[DhcpOption.MessageType][2..]);
            Assert.Equal("0F0B" + Convert.ToHexString("localdomain"u8), Convert.ToHexString(options[DhcpOption.DomainName]));
            Assert.Equal(Convert.ToHexString(golden), Convert.ToHexString(options[DhcpOption.DomainSearch]));
        }
    }

    [Fact]
    public void AnExplicitSearchListReplacesTheDefaultAndNamesFollowEachOther()
    {
        var gw = new Gateway(new GatewayOptions { IsnSecret = 1, SearchDomains = ["example.test", "corp.example.com."] }, _sink, new RecordingFlows());
        gw.Receive(G.Dhcp(DhcpOption.Discover, 1, G.GuestMac), 0);
        Dictionary<byte, byte[]> options = RawOptions(Reply());
        // 119, 32 bytes (14 + 18): 7 "example" 4 "test" 0, then 4 "corp" 7 "example" 3 "com" 0 (uncompressed, RFC 3397 §2).
        Assert.Equal(
            "7720" + "076578616D706C65" + "0474657374" + "00" + "04636F7270" + "076578616D706C65" + "03636F6D" + "00",
            Convert.ToHexString(options[DhcpOption.DomainSearch]));
    }

    [Fact]
    public void NamesThatCannotBeEncodedAreLeftOut()
    {
        string longLabel = new('a', 64);
        byte[] encoded = Gateway.EncodeSearchList(["", ".", "a..b", longLabel + ".test", "caf\u00e9.test", "ok.test"]);
        Assert.Equal("026F6B" + "0474657374" + "00", Convert.ToHexString(encoded));
        Assert.Empty(Gateway.EncodeSearchList([""]));
    }

    [Fact]
    public void NoDomainMeansNoSearchOption()
    {
        var gw = new Gateway(new GatewayOptions { IsnSecret = 1, DomainName = "" }, _sink, new RecordingFlows());
        gw.Receive(G.Dhcp(DhcpOption.Discover, 1, G.GuestMac), 0);
        Dictionary<byte, byte[]> options = RawOptions(Reply());
        Assert.False(options.ContainsKey(DhcpOption.DomainSearch));
        Assert.False(options.ContainsKey(DhcpOption.DomainName));
    }

    private byte[] Reply()
    {
        byte[] frame = Assert.Single(_sink.Take());
        Assert.True(Packet.ParsePacket(LinkLayers.Ethernet, frame).Extract<UdpPacket>().ValidUdpChecksum);
        return frame.AsSpan(14 + 20 + 8).ToArray();
    }

    /// <summary>Each option's whole TLV (code, length, value) by code, walked by hand (RFC 2132 §2).</summary>
    private static Dictionary<byte, byte[]> RawOptions(byte[] bootp)
    {
        var d = new Dictionary<byte, byte[]>();
        int i = DhcpMessage.OptionsOffset;
        while (i < bootp.Length && bootp[i] != DhcpOption.End)
        {
            if (bootp[i] == DhcpOption.Pad)
            {
                i++;
                continue;
            }
            int end = i + 2 + bootp[i + 1];
            Assert.True(end <= bootp.Length, "option runs past the message");
            Assert.False(d.ContainsKey(bootp[i]), $"option {bootp[i]} twice");
            d[bootp[i]] = bootp[i..end];
            i = end;
        }
        Assert.True(i < bootp.Length, "no end option");
        return d;
    }
}
