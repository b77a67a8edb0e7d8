using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Links;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Tests.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>
/// Alone in its collection: it counts the first-chance exceptions thrown under the NAT's connect code in the whole
/// process, which tests running beside it would add to.
/// </summary>
[CollectionDefinition(DisableParallelization = true)]
public sealed class ExceptionCountingCollection;

/// <summary>
/// A guest's IPv6 connects (NAT66) through a running server to the host alias, which leads to the host's ::1: the host
/// socket is connected by the same non-blocking connect(2) as IPv4's, so neither a connect nor a refusal throws.
/// </summary>
[Collection(nameof(ExceptionCountingCollection))]
public sealed class Nat66ConnectTests : IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    private static readonly UInt128 Guest6 = Ip6.Parse("fd00:6b69:7400::1234");
    private static readonly UInt128 Host6 = Ip6.Parse("fd00:6b69:7400::2");
    private readonly VpnKitServer _server = new(new VpnKitServerOptions { DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)] }, NullLoggerFactory.Instance);
    private readonly MemoryLink _link = new();

    public Nat66ConnectTests()
    {
        _server.Start();
        _server.AddLink(_link);
    }

    public void Dispose() => _server.Dispose();

    [Fact]
    public void ARefusedIpv6ConnectResetsTheGuestWithoutAnException()
    {
        // A port closed on ::1 and on 127.0.0.1 (a dual-stack listener held both), so the ::1 -> 127.0.0.1 retry
        // (TcpProxy.RetryOnIpv4Loopback) is refused too: two host connects, one RST.
        ushort closed;
        using (var probe = new TcpListener(IPAddress.IPv6Any, 0))
        {
            probe.Server.DualMode = true;
            probe.Start();
            closed = (ushort)((IPEndPoint)probe.LocalEndpoint).Port;
        }
        (TcpSegmentCopy rst, int exceptions) = CountingVpnKitExceptions(() =>
        {
            _link.Inject(Syn(40100, closed, 5000));
            return NextTcp(40100, s => (s.Flags & TcpFlags.Rst) != 0);
        });
        Assert.Equal(TcpFlags.Rst | TcpFlags.Ack, rst.Flags & (TcpFlags.Rst | TcpFlags.Ack));
        Assert.Equal(5001u, rst.Ack);
        Assert.Equal(0, exceptions);
    }

    [Fact]
    public void AnIpv6ConnectToTheHostsLoopbackIsAcceptedWithoutAnException()
    {
        using var listener = new TcpListener(IPAddress.IPv6Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        (TcpSegmentCopy synAck, int exceptions) = CountingVpnKitExceptions(() =>
        {
            _link.Inject(Syn(40101, port, 7000));
            return NextTcp(40101, s => (s.Flags & (TcpFlags.Syn | TcpFlags.Ack)) == (TcpFlags.Syn | TcpFlags.Ack));
        });
        Assert.Equal(7001u, synAck.Ack);
        Assert.Equal(0, exceptions);
        using Socket accepted = listener.AcceptSocket();
        Assert.Equal(IPAddress.IPv6Loopback, ((IPEndPoint)accepted.RemoteEndPoint!).Address);
    }

    /// <summary>
    /// Runs <paramref name="action"/> and counts the exceptions thrown meanwhile, on any thread, with the host connect's
    /// code on the stack (TcpProxy, HostSocket: on the link's reader thread or the event loop). Other VpnKit frames are
    /// left out: servers that earlier tests disposed still unwind their receive loops with exceptions.
    /// </summary>
    private static (T Result, int Exceptions) CountingVpnKitExceptions<T>(Func<T> action)
    {
        int count = 0;
        EventHandler<System.Runtime.ExceptionServices.FirstChanceExceptionEventArgs> handler = (_, _) =>
        {
            foreach (StackFrame f in new StackTrace(false).GetFrames())
            {
                if (f.GetMethod()?.DeclaringType is Type t && (t == typeof(TcpProxy) || t == typeof(HostSocket)))
                {
                    Interlocked.Increment(ref count);
                    return;
                }
            }
        };
        AppDomain.CurrentDomain.FirstChanceException += handler;
        try
        {
            T result = action();
            // Whatever the event loop still does for the flow (the host socket's close) happens now.
            Thread.Sleep(200);
            return (result, Volatile.Read(ref count));
        }
        finally
        {
            AppDomain.CurrentDomain.FirstChanceException -= handler;
        }
    }

    private static byte[] Syn(ushort srcPort, ushort dstPort, uint seq)
    {
        byte[] t = new byte[20];
        TcpSegment.Write(t, 20, srcPort, dstPort, seq, 0, TcpFlags.Syn, 65535, 0, 0);
        t[16] = t[17] = 0;
        BinaryPrimitives.WriteUInt16BigEndian(t.AsSpan(16), Checksum.Finish(Checksum.Add(Checksum.PseudoHeader6(Guest6, Host6, IpProtocol.Tcp, t.Length), t)));
        byte[] f = new byte[14 + 40 + t.Length];
        EthernetFrame.Write(f, G.GatewayMac, G.GuestMac, EtherType.Ipv6);
        Ipv6Packet.Write(f.AsSpan(14), t.Length, IpProtocol.Tcp, 64, Guest6, Host6);
        t.CopyTo(f.AsSpan(54));
        return f;
    }

    private sealed record TcpSegmentCopy(TcpFlags Flags, uint Ack);

    private TcpSegmentCopy NextTcp(ushort guestPort, Func<TcpSegmentCopy, bool> match)
    {
        DateTime deadline = DateTime.UtcNow + Wait;
        while (true)
        {
            TimeSpan left = deadline - DateTime.UtcNow;
            byte[]? f = null;
            Assert.True(left > TimeSpan.Zero && _link.FromGateway.TryTake(out f, (int)left.TotalMilliseconds, TestContext.Current.CancellationToken), "no matching segment from the gateway");
            if (!EthernetFrame.TryParse(f, out EthernetFrame e) || e.EtherType != EtherType.Ipv6
                || Ipv6Packet.TryParse(e.Payload, out Ipv6Packet ip) != Ipv6Error.None || ip.NextHeader != IpProtocol.Tcp)
            {
                continue; // NDP and RAs
            }
            Assert.Equal((Host6, Guest6), (ip.Source, ip.Destination));
            Assert.True(TcpSegment.TryParse(ip.Payload, out TcpSegment s));
            var copy = new TcpSegmentCopy(s.Flags, s.Acknowledgment);
            if (s.DestinationPort == guestPort && match(copy))
            {
                return copy;
            }
        }
    }
}
