using System.Buffers.Binary;
using Kit.VpnKit.Capture;
using Kit.VpnKit.Policy;
using Kit.VpnKit.Wire;
using Xunit;

namespace Kit.VpnKit.Tests.Capture;

/// <summary>
/// Captures of one policy rule: the frame that asked for a decision is taken when the rule decides it, the flow is
/// followed both ways (ICMP errors about it too), flows of other rules and of none are not, an sni/host flow's backlog
/// comes with it, a deleted rule ends its capture, and the bounds hold.
/// </summary>
public sealed class RuleCapturesTests
{
    private const uint Guest = 0xC0A84103, Host = 0xC0A84102, Gateway = 0xC0A84101; // 192.168.65.3, .2, .1
    private const byte Syn = 0x02, Ack = 0x10, Rst = 0x04, Psh = 0x08;
    private static readonly UInt128 Guest6 = Ip6.Parse("fd00:6b69:7400::3"), Host6 = Ip6.Parse("fd00:6b69:7400::2");

    private static byte[] Ipv4(byte proto, uint src, uint dst, ReadOnlySpan<byte> upper)
    {
        byte[] f = new byte[14 + 20 + upper.Length];
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x0800);
        Span<byte> ip = f.AsSpan(14);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(2), (ushort)(20 + upper.Length));
        ip[8] = 64;
        ip[9] = proto;
        BinaryPrimitives.WriteUInt32BigEndian(ip.Slice(12), src);
        BinaryPrimitives.WriteUInt32BigEndian(ip.Slice(16), dst);
        upper.CopyTo(ip.Slice(20));
        return f;
    }

    private static byte[] Ipv6(byte next, UInt128 src, UInt128 dst, ReadOnlySpan<byte> upper)
    {
        byte[] f = new byte[14 + 40 + upper.Length];
        BinaryPrimitives.WriteUInt16BigEndian(f.AsSpan(12), 0x86DD);
        Span<byte> ip = f.AsSpan(14);
        ip[0] = 0x60;
        BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(4), (ushort)upper.Length);
        ip[6] = next;
        ip[7] = 64;
        BinaryPrimitives.WriteUInt128BigEndian(ip.Slice(8), src);
        BinaryPrimitives.WriteUInt128BigEndian(ip.Slice(24), dst);
        upper.CopyTo(ip.Slice(40));
        return f;
    }

    private static byte[] Ports(ushort src, ushort dst, int length, byte tcpFlags = 0)
    {
        byte[] h = new byte[length];
        BinaryPrimitives.WriteUInt16BigEndian(h, src);
        BinaryPrimitives.WriteUInt16BigEndian(h.AsSpan(2), dst);
        if (length >= 20)
        {
            h[12] = 0x50;
            h[13] = tcpFlags;
        }
        return h;
    }

    private static byte[] Tcp(uint src, ushort srcPort, uint dst, ushort dstPort, byte flags, int payload = 0) =>
        Ipv4(6, src, dst, Ports(srcPort, dstPort, 20 + payload, flags));

    private static byte[] Udp(uint src, ushort srcPort, uint dst, ushort dstPort, int payload = 8) => Ipv4(17, src, dst, Ports(srcPort, dstPort, 8 + payload));

    private static byte[] Echo(byte type, ushort id, ushort sequence)
    {
        byte[] m = new byte[8 + 16];
        m[0] = type;
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(m.AsSpan(6), sequence);
        return m;
    }

    /// <summary>An ICMP error (RFC 792 type 3, code 13: administratively prohibited) quoting the IP packet of <paramref name="quoted"/>'s frame.</summary>
    private static byte[] Unreachable(uint src, uint dst, byte[] quoted)
    {
        ReadOnlySpan<byte> packet = quoted.AsSpan(14, Math.Min(quoted.Length - 14, 28));
        byte[] m = new byte[8 + packet.Length];
        (m[0], m[1]) = (3, 13);
        packet.CopyTo(m.AsSpan(8));
        return Ipv4(1, src, dst, m);
    }

    private static (PolicyTable Table, LiveCaptures Captures) ThreeRules()
    {
        var table = new PolicyTable(_ => null);
        table.ReplaceAll(
        [
            new PolicyRule("blocked", new RuleMatch { PortLow = 9, PortHigh = 9 }, RuleAction.Reject, new Impairment()),
            new PolicyRule("web", new RuleMatch { Proto = RuleProto.Tcp, PortLow = 8080, PortHigh = 8080 }, RuleAction.Allow, new Impairment()),
            new PolicyRule("no-pings", new RuleMatch { Proto = RuleProto.Icmp }, RuleAction.Deny, new Impairment()),
        ]);
        var captures = new LiveCaptures();
        captures.Watch(table);
        return (table, captures);
    }

    /// <summary>What the NAT does for an opening frame: the tap sees it, then the table decides, then the hook is told.</summary>
    private static PolicyRule? Arrive(LiveCaptures captures, PolicyTable table, byte[] frame, RuleProto proto, IpAddr remote, ushort remotePort)
    {
        captures.Offer(frame);
        PolicyRule? rule = table.Decide(new FlowFacts(proto, remote.IsV4 ? remote.Ipv4 : 0, remotePort, RemoteIp6: remote.IsV4 ? 0 : remote.Value), out bool needStream);
        captures.Decided(proto, remote, remotePort, rule, needStream);
        return rule;
    }

    private static List<byte[]> Records(byte[] pcap)
    {
        var frames = new List<byte[]>();
        for (int at = 24; at < pcap.Length;)
        {
            int length = BinaryPrimitives.ReadInt32LittleEndian(pcap.AsSpan(at + 8));
            frames.Add(pcap.AsSpan(at + 16, length).ToArray());
            at += 16 + length;
        }
        return frames;
    }

    private static async Task<List<byte[]>> Stop(LiveCaptures captures, LiveCapture c)
    {
        using var file = new MemoryStream();
        Task reading = c.CopyToAsync(file, TestContext.Current.CancellationToken);
        Assert.True(captures.Remove(c.Id));
        await reading.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        return Records(file.ToArray());
    }

    [Fact]
    public async Task A_rejected_syn_and_the_gateways_rst_are_taken_and_no_other_rules_flow()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? c));
        Assert.NotNull(c);

        byte[] syn = Tcp(Guest, 40000, Host, 9, Syn);
        Assert.Equal("blocked", Arrive(captures, table, syn, RuleProto.Tcp, IpAddr.V4(Host), 9)?.Name);
        byte[] rst = Tcp(Host, 9, Guest, 40000, Rst | Ack);
        captures.Offer(rst);
        // Another rule's flow, and a flow no rule decides, both ways.
        byte[] web = Tcp(Guest, 40001, Host, 8080, Syn);
        Assert.Equal("web", Arrive(captures, table, web, RuleProto.Tcp, IpAddr.V4(Host), 8080)?.Name);
        captures.Offer(Tcp(Host, 8080, Guest, 40001, Syn | Ack));
        Assert.Null(Arrive(captures, table, Tcp(Guest, 40002, Host, 7777, Syn), RuleProto.Tcp, IpAddr.V4(Host), 7777));
        captures.Offer(Tcp(Host, 7777, Guest, 40002, Syn | Ack));
        // The guest tries again from the same port: its SYN is the followed flow's, taken once.
        Assert.Equal("blocked", Arrive(captures, table, syn, RuleProto.Tcp, IpAddr.V4(Host), 9)?.Name);

        Assert.Equal(3, c!.Frames);
        Assert.Equal(1, c.Flows);
        List<byte[]> frames = await Stop(captures, c);
        Assert.Equal(3, frames.Count);
        Assert.Equal(syn, frames[0]);
        Assert.Equal(rst, frames[1]);
        Assert.Equal(syn, frames[2]);
    }

    [Fact]
    public async Task A_rejected_datagram_and_the_unreachable_quoting_it_are_taken_as_are_denied_echoes_of_both_families()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? udp));
        Assert.True(captures.TryStartRule("no-pings", out LiveCapture? pings));

        byte[] datagram = Udp(Guest, 5353, Host, 9);
        Arrive(captures, table, datagram, RuleProto.Udp, IpAddr.V4(Host), 9);
        byte[] prohibited = Unreachable(Gateway, Guest, datagram);
        captures.Offer(prohibited);
        captures.Offer(Unreachable(Gateway, Guest, Udp(Guest, 5354, Host, 9))); // about a datagram no decision was seen for
        Arrive(captures, table, Udp(Guest, 5353, Host, 53), RuleProto.Udp, IpAddr.V4(Host), 53); // no rule

        byte[] ping = Ipv4(1, Guest, Host, Echo(8, 0x1234, 1));
        Arrive(captures, table, ping, RuleProto.Icmp, IpAddr.V4(Host), 0);
        byte[] ping6 = Ipv6(58, Guest6, Host6, Echo(128, 0x4321, 1));
        Arrive(captures, table, ping6, RuleProto.Icmp, IpAddr.V6(Host6), 0);
        byte[] reply6 = Ipv6(58, Host6, Guest6, Echo(129, 0x4321, 1));
        captures.Offer(reply6);
        captures.Offer(Ipv6(58, Host6, Guest6, Echo(129, 0x9999, 1))); // another echo's reply

        List<byte[]> u = await Stop(captures, udp!);
        Assert.Equal(new[] { datagram, prohibited }, u.ToArray());
        List<byte[]> p = await Stop(captures, pings!);
        Assert.Equal(new[] { ping, ping6, reply6 }, p.ToArray());
    }

    [Fact]
    public async Task An_icmpv6_error_quoting_a_rejected_ipv6_datagram_is_taken()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? c));
        byte[] datagram = Ipv6(17, Guest6, Host6, Ports(5353, 9, 8 + 8));
        Arrive(captures, table, datagram, RuleProto.Udp, IpAddr.V6(Host6), 9);
        // RFC 4443 §3.1: destination unreachable, code 1 (administratively prohibited), quoting the packet.
        byte[] error = new byte[8 + datagram.Length - 14];
        (error[0], error[1]) = (1, 1);
        datagram.AsSpan(14).CopyTo(error.AsSpan(8));
        byte[] prohibited = Ipv6(58, Ip6.Parse("fd00:6b69:7400::1"), Guest6, error);
        captures.Offer(prohibited);
        List<byte[]> frames = await Stop(captures, c!);
        Assert.Equal(new[] { datagram, prohibited }, frames.ToArray());
    }

    [Fact]
    public async Task A_flow_decided_on_its_first_bytes_brings_its_handshake_and_first_bytes()
    {
        var table = new PolicyTable(_ => null);
        table.ReplaceAll(
        [
            new PolicyRule("by-host", new RuleMatch { Host = "blocked.test" }, RuleAction.Reject, new Impairment()),
            new PolicyRule("rest", new RuleMatch(), RuleAction.Allow, new Impairment()),
        ]);
        var captures = new LiveCaptures();
        captures.Watch(table);
        Assert.True(captures.TryStartRule("by-host", out LiveCapture? c));

        byte[][] flow =
        [
            Tcp(Guest, 41000, Host, 80, Syn),
            Tcp(Host, 80, Guest, 41000, Syn | Ack),
            Tcp(Guest, 41000, Host, 80, Ack),
            Tcp(Guest, 41000, Host, 80, Psh | Ack, payload: 40),
        ];
        captures.Offer(flow[0]);
        Assert.Null(table.Decide(new FlowFacts(RuleProto.Tcp, Host, 80), out bool needStream));
        Assert.True(needStream);
        captures.Decided(RuleProto.Tcp, IpAddr.V4(Host), 80, null, needStream);
        foreach (byte[] f in flow[1..])
        {
            captures.Offer(f);
        }
        // A second undecided flow, which the proxy finds is not for this rule.
        captures.Offer(Tcp(Guest, 41001, Host, 80, Syn));
        captures.Decided(RuleProto.Tcp, IpAddr.V4(Host), 80, null, needStream: true);
        captures.Offer(Tcp(Host, 80, Guest, 41001, Syn | Ack));
        Assert.Equal(2, captures.RuleFlows.PendingCount);
        Assert.Equal(0, c!.Frames);

        PolicyRule? rule = table.Decide(new FlowFacts(RuleProto.Tcp, Host, 80, Host: "blocked.test", StreamKnown: true), out _);
        captures.DecidedOnStream(IpAddr.V4(Guest), 41000, IpAddr.V4(Host), 80, rule);
        captures.DecidedOnStream(IpAddr.V4(Guest), 41001, IpAddr.V4(Host), 80, table.Decide(new FlowFacts(RuleProto.Tcp, Host, 80, Host: "ok.test", StreamKnown: true), out _));
        Assert.Equal(0, captures.RuleFlows.PendingCount);
        byte[] rst = Tcp(Host, 80, Guest, 41000, Rst | Ack);
        captures.Offer(rst);
        captures.Offer(Tcp(Host, 80, Guest, 41001, Ack));

        List<byte[]> frames = await Stop(captures, c);
        Assert.Equal(flow.Append(rst).ToArray(), frames.ToArray());
    }

    [Fact]
    public async Task Deleting_the_rule_ends_its_capture_and_an_unknown_rule_is_refused()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.False(captures.TryStartRule("nope", out _));
        Assert.True(captures.TryStartRule("web", out LiveCapture? c));
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? other));
        Arrive(captures, table, Tcp(Guest, 40001, Host, 8080, Syn), RuleProto.Tcp, IpAddr.V4(Host), 8080);
        using var file = new MemoryStream();
        Task reading = c!.CopyToAsync(file, TestContext.Current.CancellationToken);

        // Replaced where it stands (same name): the capture goes on. Removed: it ends, its readers reach the end.
        table.Put(new PolicyRule("web", new RuleMatch { Proto = RuleProto.Tcp, PortLow = 8080, PortHigh = 8081 }, RuleAction.Allow, new Impairment()));
        Assert.False(c.Ended);
        Assert.True(table.Remove("web"));
        await reading.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        Assert.True(c.Ended);
        Assert.Equal("rule deleted", c.EndReason);
        Assert.Equal(1, c.Frames);
        captures.Offer(Tcp(Host, 8080, Guest, 40001, Syn | Ack));
        Assert.Equal(1, c.Frames);
        Assert.False(other!.Ended);
        Assert.NotNull(captures.Find(c.Id)); // still listed, with why it ended, until deleted
        Assert.False(captures.TryStartRule("web", out _));
    }

    [Fact]
    public void A_decision_takes_only_the_frame_that_asked_on_its_own_thread()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? c));
        PolicyRule blocked = table.Rules[0];
        // Decided for another destination than the frame's: not that frame's decision.
        captures.Offer(Tcp(Guest, 40000, Host, 9, Syn));
        captures.Decided(RuleProto.Tcp, IpAddr.V4(Host), 10, blocked, false);
        // Decided on another thread (another link's) than the tap that holds the frame.
        captures.Offer(Tcp(Guest, 40001, Host, 9, Syn));
        var other = new Thread(() => captures.Decided(RuleProto.Tcp, IpAddr.V4(Host), 9, blocked, false));
        other.Start();
        Assert.True(other.Join(TimeSpan.FromSeconds(10)));
        // A frame in between that is not an opening one: the held frame is no longer the one being decided.
        captures.Offer(Tcp(Guest, 40002, Host, 9, Syn));
        captures.Offer(Tcp(Guest, 40003, Host, 9, Ack));
        captures.Decided(RuleProto.Tcp, IpAddr.V4(Host), 9, blocked, false);
        Assert.Equal(0, c!.Frames);
        Assert.Equal(0, captures.RuleFlows.Count);
    }

    [Fact]
    public void A_datagram_in_fragments_is_followed_from_its_first_fragment()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? c));
        byte[] first = Udp(Guest, 5353, Host, 9, payload: 64);
        first[14 + 6] = 0x20; // MF: more fragments (RFC 791 §3.1)
        byte[] last = Udp(Guest, 5353, Host, 9, payload: 16);
        BinaryPrimitives.WriteUInt16BigEndian(last.AsSpan(14 + 6), 9); // offset 72 bytes, the last fragment
        captures.Offer(first);
        captures.Offer(last); // the engine reassembles and decides on this one
        captures.Decided(RuleProto.Udp, IpAddr.V4(Host), 9, table.Rules[0], false);
        Assert.Equal(1, c!.Frames);
        Assert.Equal(1, c.Flows);
    }

    [Fact]
    public void Followed_flows_and_backlogs_are_bounded()
    {
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out LiveCapture? c));
        PolicyRule blocked = table.Rules[0];
        for (int i = 0; i < RuleFlows.MaxFlows + 100; i++)
        {
            captures.Offer(Udp(Guest, (ushort)(1024 + i), Host, 9, payload: 0));
            captures.Decided(RuleProto.Udp, IpAddr.V4(Host), 9, blocked, false);
        }
        Assert.Equal(RuleFlows.MaxFlows, captures.RuleFlows.Count);
        Assert.Equal(RuleFlows.MaxFlows + 100, c!.Flows);
        for (int i = 0; i < RuleFlows.MaxPending + 10; i++)
        {
            captures.Offer(Tcp(Guest, (ushort)(2000 + i), Host, 443, Syn));
            captures.Decided(RuleProto.Tcp, IpAddr.V4(Host), 443, null, needStream: true);
            for (int j = 0; j < 100; j++)
            {
                captures.Offer(Tcp(Guest, (ushort)(2000 + i), Host, 443, Ack, payload: 1400));
            }
        }
        Assert.Equal(RuleFlows.MaxPending, captures.RuleFlows.PendingCount);

        // The last rule capture deleted: nothing is followed or held any more.
        Assert.True(captures.Remove(c.Id));
        Assert.Equal(0, captures.RuleFlows.Count);
        Assert.Equal(0, captures.RuleFlows.PendingCount);
    }

    [Fact]
    public void Arbitrary_frames_never_throw()
    {
        var random = new Random(17);
        (PolicyTable table, LiveCaptures captures) = ThreeRules();
        Assert.True(captures.TryStartRule("blocked", out _));
        byte[] template = Unreachable(Gateway, Guest, Udp(Guest, 5353, Host, 9));
        for (int i = 0; i < 20_000; i++)
        {
            byte[] f = new byte[random.Next(0, template.Length + 60)];
            random.NextBytes(f);
            // Most keep a valid Ethernet and IP start so the ICMP and quoted headers are what is random.
            if (i % 4 != 0)
            {
                template.AsSpan(0, Math.Min(f.Length, 14 + 20 + (i % 3) * 8)).CopyTo(f);
            }
            FlowKey.TryRead(f, out _, out _);
            captures.Offer(f);
            captures.Decided(RuleProto.Udp, IpAddr.V4(Host), 9, table.Rules[0], false);
        }
    }
}
