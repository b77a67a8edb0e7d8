using System.Buffers.Binary;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>
/// Security review finding 11: leases expire (2 hours, option 51 says so), an expired lease is reclaimed when the pool is
/// short, a guest that renews keeps its address, and one link cannot take more than 16 leases by inventing client MACs.
/// The engine runs on a fake clock: time is the <c>now</c> argument, in milliseconds.
/// </summary>
public sealed class DhcpLeaseTests
{
    private const long Hour = 3_600_000;
    private readonly CapturingSink _sink = new();

    private static MacAddress Mac(int i) => MacAddress.Parse($"02:00:00:00:{i >> 8:x2}:{i & 0xFF:x2}");

    private Gateway Engine(string last = "192.168.65.254") =>
        new(new GatewayOptions { IsnSecret = 1, LastGuestIp = Ip4.Parse(last) }, _sink, new RecordingFlows());

    /// <summary>A decoded DHCP reply.</summary>
    private sealed record Reply(byte MessageType, uint YourIp, uint? LeaseTime);

    /// <summary>The engine's reply to one DHCP message, or null when it stayed silent.</summary>
    private Reply? Ask(Gateway gw, byte type, MacAddress mac, long now, uint requested = 0)
    {
        byte[] frame = G.Dhcp(type, 7, mac, requested, type == DhcpOption.Request && requested != 0 ? G.Gateway : 0);
        gw.Receive(frame, now);
        List<byte[]> frames = _sink.Take();
        if (frames.Count == 0)
        {
            return null;
        }
        Assert.True(DhcpMessage.TryParse(Assert.Single(frames).AsSpan(14 + 20 + 8), out DhcpMessage m));
        return new Reply(m.MessageType, m.YourIp,
            m.TryGetOption(DhcpOption.LeaseTime, out ReadOnlySpan<byte> v) && v.Length == 4 ? BinaryPrimitives.ReadUInt32BigEndian(v) : null);
    }

    /// <summary>DISCOVER, then REQUEST of the offer: the address bound, or 0.</summary>
    private uint Bind(Gateway gw, MacAddress mac, long now)
    {
        if (Ask(gw, DhcpOption.Discover, mac, now) is not { } offer)
        {
            return 0;
        }
        Assert.Equal(DhcpOption.Offer, offer.MessageType);
        Reply ack = Ask(gw, DhcpOption.Request, mac, now, offer.YourIp)!;
        Assert.Equal(DhcpOption.Ack, ack.MessageType);
        return ack.YourIp;
    }

    [Fact]
    public void OneLinkInventingClientMacsStopsAtTheCap()
    {
        Gateway gw = Engine();
        int offers = 0;
        for (int i = 1; i <= 100; i++)
        {
            if (Ask(gw, DhcpOption.Discover, Mac(i), 0) is { MessageType: DhcpOption.Offer })
            {
                offers++;
            }
        }
        Assert.Equal(16, offers);
        // A client beyond the cap asking straight for a free address (INIT-REBOOT) is refused with a DHCPNAK.
        Assert.Equal(DhcpOption.Nak, Ask(gw, DhcpOption.Request, Mac(200), 0, Ip4.Parse("192.168.65.100"))!.MessageType);
        // The 16 that got an offer can still bind it.
        Assert.Equal(Ip4.Parse("192.168.65.3"), Bind(gw, Mac(1), 1000));
    }

    [Fact]
    public void TheLeaseTimeOptionIsTwoHours()
    {
        Gateway gw = Engine();
        foreach (byte type in (byte[])[DhcpOption.Discover, DhcpOption.Request])
        {
            Assert.Equal(7200u, Ask(gw, type, Mac(1), 0, type == DhcpOption.Request ? G.Guest : 0)!.LeaseTime);
        }
    }

    [Fact]
    public void AnExpiredLeaseIsReclaimedWhenThePoolIsShort()
    {
        Gateway gw = Engine(last: "192.168.65.4"); // a pool of two: .3 and .4
        Assert.Equal(Ip4.Parse("192.168.65.3"), Bind(gw, Mac(1), 0));
        Assert.Equal(Ip4.Parse("192.168.65.4"), Bind(gw, Mac(2), 0));
        Assert.Equal(Ip4.Parse("192.168.65.4"), Bind(gw, Mac(2), 1 * Hour)); // Mac(2) renews; Mac(1) never does.
        // Both leases live: a third client gets nothing.
        Assert.Null(Ask(gw, DhcpOption.Discover, Mac(3), (2 * Hour) - 1));
        // Mac(1)'s lease ran out at 2 h: its address goes to the new client; Mac(2)'s (until 3 h) is kept.
        Assert.Equal(Ip4.Parse("192.168.65.3"), Bind(gw, Mac(3), (2 * Hour) + 1));
        Assert.Equal(Ip4.Parse("192.168.65.4"), Bind(gw, Mac(2), (2 * Hour) + 2));
        // The client that lost its address is told so when it tries to renew it (RFC 2131 §4.3.2).
        Assert.Equal(DhcpOption.Nak, Ask(gw, DhcpOption.Request, Mac(1), (2 * Hour) + 3, Ip4.Parse("192.168.65.3"))!.MessageType);
    }

    [Fact]
    public void ARenewingGuestKeepsItsAddressAndAnIdleOneKeepsItWhileThePoolLasts()
    {
        Gateway gw = Engine(last: "192.168.65.4");
        uint a = Bind(gw, Mac(1), 0);
        for (long t = 1; t <= 10; t++)
        {
            // RFC 2131 §4.4.5: RENEWING at T1 = half the lease.
            Reply ack = Ask(gw, DhcpOption.Request, Mac(1), t * Hour, a)!;
            Assert.Equal(DhcpOption.Ack, ack.MessageType);
            Assert.Equal(a, ack.YourIp);
        }
        // Another guest comes and goes; long after its lease expired it still gets its old address back, since nobody
        // needed it meanwhile (the stable address vpnkit guests are used to).
        uint b = Bind(gw, Mac(2), 10 * Hour);
        Assert.Equal(b, Bind(gw, Mac(2), 100 * Hour));
        Assert.Equal(a, Bind(gw, Mac(1), 100 * Hour));
    }
}
