using Kit.VpnKit.Links;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using PacketDotNet;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>
/// <see cref="Gateway.ReserveLease"/>: what VMN3T Preferred_ipv4 asks of the DHCP server (reference/vpnkit.md
/// §2.2.1), with vpnkit's rules: in the pool, free, and a known client may only ask for the address it has.
/// </summary>
public sealed class LeaseReservationTests
{
    private static readonly MacAddress A = MacAddress.Parse("02:00:00:00:00:0a");
    private static readonly MacAddress B = MacAddress.Parse("02:00:00:00:00:0b");
    private readonly CapturingSink _sink = new();
    private readonly Gateway _gw;

    public LeaseReservationTests() => _gw = new Gateway(new GatewayOptions { IsnSecret = 1 }, _sink, new RecordingFlows());

    [Fact]
    public void ReservedAddressIsWhatDhcpOffersAndAcks()
    {
        uint wanted = Ip4.Parse("192.168.65.10");
        Assert.Equal(LeaseReservation.Reserved, _gw.ReserveLease(A, wanted));
        Assert.Equal(wanted, Offer(A, 1).YourIp);
        _gw.Receive(G.Dhcp(DhcpOption.Request, 2, A, requested: wanted, server: G.Gateway), 0);
        byte[] ack = Reply();
        Assert.True(DhcpMessage.TryParse(ack, out DhcpMessage k));
        Assert.Equal(DhcpOption.Ack, k.MessageType);
        Assert.Equal(wanted, k.YourIp);
        // The pool skips the reserved address for others, and still starts at the bottom.
        Assert.Equal(G.Guest, Offer(B, 3).YourIp);
    }

    [Fact]
    public void TheSameClientAskingAgainForItsAddressIsGranted()
    {
        uint wanted = Ip4.Parse("192.168.65.200");
        Assert.Equal(LeaseReservation.Reserved, _gw.ReserveLease(A, wanted));
        Assert.Equal(LeaseReservation.Reserved, _gw.ReserveLease(A, wanted));
        Assert.Equal(wanted, _gw.LeaseFor(A));
    }

    [Theory]
    [InlineData("10.99.0.5")] // another network
    [InlineData("192.168.65.1")] // the gateway
    [InlineData("192.168.65.2")] // the host alias
    [InlineData("192.168.65.255")] // broadcast
    [InlineData("192.168.65.0")] // the network itself
    [InlineData("0.0.0.0")]
    public void AddressesOutsideThePoolAreRefused(string address)
    {
        Assert.Equal(LeaseReservation.OutOfRange, _gw.ReserveLease(A, Ip4.Parse(address)));
        Assert.Equal(G.Guest, _gw.LeaseFor(A)); // Nothing was recorded: the client still gets the first free address.
    }

    [Fact]
    public void AnAddressHeldByAnotherClientIsRefused()
    {
        uint b = _gw.LeaseFor(B); // B got .3 by DHCP
        Assert.Equal(LeaseReservation.InUse, _gw.ReserveLease(A, b));
        Assert.Equal(LeaseReservation.Reserved, _gw.ReserveLease(A, Ip4.Parse("192.168.65.4")));
        Assert.Equal(LeaseReservation.InUse, _gw.ReserveLease(MacAddress.Parse("02:00:00:00:00:0c"), Ip4.Parse("192.168.65.4")));
    }

    [Fact]
    public void AnAddressSeenInTrafficCountsAsUsed()
    {
        // A guest with a static 192.168.65.50 ARPs for the gateway: the engine learns it and keeps it for that MAC.
        _gw.Receive(G.ArpRequest(G.Gateway, sender: Ip4.Parse("192.168.65.50"), mac: B), 0);
        Assert.Single(_sink.Take()); // answered
        Assert.Equal(LeaseReservation.InUse, _gw.ReserveLease(A, Ip4.Parse("192.168.65.50")));
    }

    [Fact]
    public void AKnownClientCannotMoveToAnotherAddress()
    {
        uint first = _gw.LeaseFor(A);
        Assert.Equal(LeaseReservation.MacHasOtherAddress, _gw.ReserveLease(A, first + 1));
        Assert.Equal(first, _gw.LeaseFor(A));
        Assert.Equal(LeaseReservation.Reserved, _gw.ReserveLease(B, first + 1)); // and the address stayed free
    }

    [Fact]
    public void RefusalsUseVpnkitsDisconnectReasons()
    {
        uint ip = Ip4.Parse("192.168.65.7");
        Assert.Null(Vmn3t.RefusalReason(LeaseReservation.Reserved, ip));
        Assert.Equal("Preferred IP address out of range.", Vmn3t.RefusalReason(LeaseReservation.OutOfRange, ip));
        Assert.Equal("Preferred IP address 192.168.65.7 already used.", Vmn3t.RefusalReason(LeaseReservation.InUse, ip));
        Assert.Equal("UUID already assigned to a different IP than the IP requested by the client", Vmn3t.RefusalReason(LeaseReservation.MacHasOtherAddress, ip));
    }

    private DhcpMessage Offer(MacAddress mac, uint xid)
    {
        _gw.Receive(G.Dhcp(DhcpOption.Discover, xid, mac), 0);
        Assert.True(DhcpMessage.TryParse(Reply(), out DhcpMessage m));
        Assert.Equal(DhcpOption.Offer, m.MessageType);
        return m;
    }

    private byte[] Reply()
    {
        byte[] frame = Assert.Single(_sink.Take());
        Assert.True(Packet.ParsePacket(LinkLayers.Ethernet, frame).Extract<UdpPacket>().ValidUdpChecksum);
        return frame.AsSpan(14 + 20 + 8).ToArray();
    }
}
