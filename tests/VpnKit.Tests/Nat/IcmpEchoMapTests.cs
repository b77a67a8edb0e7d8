using Kit.VpnKit.Nat;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Tests.Stack;
using Kit.VpnKit.Wire;
using PacketDotNet;

namespace Kit.VpnKit.Tests.Nat;

public sealed class IcmpEchoMapTests
{
    private static readonly IpAddr Guest = IpAddr.V4(Ip4.Parse("192.168.65.3"));
    private static readonly IpAddr Remote = IpAddr.V4(Ip4.Parse("10.1.2.3"));

    [Fact]
    public void ReplyIsMappedBackToTheGuestsIdAndSequenceOnceAndOnlyFromTheTarget()
    {
        var map = new IcmpEchoMap();
        ushort k1 = map.Add(Guest, Remote, Remote, id: 0x1234, sequence: 7);
        ushort k2 = map.Add(Guest, Remote, Remote, id: 0x1234, sequence: 8);
        Assert.NotEqual(k1, k2);

        Assert.False(map.TryTake(k1, IpAddr.V4(Ip4.Parse("10.9.9.9")), out _));
        Assert.True(map.TryTake(k1, Remote, out IcmpEchoMap.Entry e));
        Assert.Equal(new IcmpEchoMap.Entry(Guest, Remote, Remote, 0x1234, 7), e);
        Assert.False(map.TryTake(k1, Remote, out _));
        Assert.True(map.TryTake(k2, Remote, out e));
        Assert.Equal((ushort)8, e.Sequence);
        Assert.False(map.TryTake(unchecked((ushort)(k2 + 1)), Remote, out _));
    }

    [Fact]
    public void TheRingIsBoundedAndAnOverwrittenEchoIsNotAnsweredForTheNewOne()
    {
        var map = new IcmpEchoMap();
        ushort old = map.Add(Guest, Remote, Remote, 1, 1);
        ushort newer = 0;
        for (int i = 0; i < IcmpEchoMap.Capacity; i++)
        {
            newer = map.Add(Guest, Remote, Remote, 2, (ushort)i);
        }
        // Same slot, different key: the late reply to the first echo must not be taken as the newer one's.
        Assert.Equal(old & (IcmpEchoMap.Capacity - 1), newer & (IcmpEchoMap.Capacity - 1));
        Assert.False(map.TryTake(old, Remote, out _));
        Assert.True(map.TryTake(newer, Remote, out IcmpEchoMap.Entry e));
        Assert.Equal((ushort)(IcmpEchoMap.Capacity - 1), e.Sequence);
    }

    [Fact]
    public void KeysWrapAt16Bits()
    {
        var map = new IcmpEchoMap();
        ushort last = 0;
        for (int i = 0; i <= ushort.MaxValue + 1; i++)
        {
            last = map.Add(Guest, Remote, Remote, 3, (ushort)i);
        }
        Assert.Equal((ushort)0, last);
        Assert.True(map.TryTake(0, Remote, out IcmpEchoMap.Entry e));
        Assert.Equal((ushort)0, e.Sequence);
    }

    /// <summary>
    /// The whole path in the engine: a guest echo to a remote address reaches the flow handler with the guest's
    /// id and sequence; the host socket's reply (which, from a datagram socket, carries the kernel's id and our key
    /// as sequence) is mapped back and emitted as a reply from the remote address with the guest's id and sequence.
    /// </summary>
    [Fact]
    public void EngineForwardsTheEchoAndEmitsTheMappedReply()
    {
        var sink = new CapturingSink();
        var flows = new RecordingFlows();
        var gw = new Gateway(new GatewayOptions { IsnSecret = 1 }, sink, flows);
        var map = new IcmpEchoMap();

        gw.Receive(G.Ping(G.Remote, 0xBEEF, 5, "hello icmp"u8.ToArray()), 1000);
        Assert.Empty(sink.Take());
        var (dst, id, seq) = Assert.Single(flows.Pings);
        ushort key = map.Add(IpAddr.V4(G.Guest), IpAddr.V4(dst), IpAddr.V4(dst), id, seq);

        // The kernel's reply: its own identifier, our key as sequence, the data echoed.
        Assert.True(map.TryTake(key, IpAddr.V4(G.Remote), out IcmpEchoMap.Entry e));
        gw.SendIcmpEchoReply(e.GuestVisibleDestination.Ipv4, e.Guest.Ipv4, e.Id, e.Sequence, "hello icmp"u8);

        byte[] frame = Assert.Single(sink.Take());
        var ip = Packet.ParsePacket(LinkLayers.Ethernet, frame).Extract<IPv4Packet>();
        Assert.Equal("10.1.2.3", ip.SourceAddress.ToString());
        Assert.Equal("192.168.65.3", ip.DestinationAddress.ToString());
        Assert.True(ip.ValidIPChecksum);
        var icmp = ip.Extract<IcmpV4Packet>();
        Assert.Equal(IcmpV4TypeCode.EchoReply, icmp.TypeCode);
        Assert.Equal(0xBEEF, icmp.Id);
        Assert.Equal(5, icmp.Sequence);
        Assert.Equal("hello icmp", System.Text.Encoding.ASCII.GetString(icmp.Data));
        Assert.True(icmp.ValidIcmpChecksum);
    }
}
