using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Services;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Services;

/// <summary>
/// An IPv6 upstream (issue 18, item 4: <c>--dns-upstream [::1]:PORT</c>, or a resolv.conf nameserver on IPv6): the
/// forwarder asks a server this test runs on the host's ::1, over UDP for a UDP query and over TCP for a query that
/// came over TCP (RFC 7766), and the guest gets the server's answer.
/// </summary>
public sealed class DnsIpv6UpstreamTests : IDisposable
{
    private readonly Socket _udp = new(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
    private readonly TcpListener _tcp;
    private readonly CancellationTokenSource _stop = new();
    private int _udpQueries;
    private int _tcpQueries;

    public DnsIpv6UpstreamTests()
    {
        // One port for both transports, as a DNS server has: the UDP port first, then TCP on the same number.
        _udp.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
        _tcp = new TcpListener(IPAddress.IPv6Loopback, ((IPEndPoint)_udp.LocalEndPoint!).Port);
        _tcp.Start();
        _ = ServeUdpAsync();
        _ = ServeTcpAsync();
    }

    public void Dispose()
    {
        _stop.Cancel();
        _udp.Dispose();
        _tcp.Stop();
    }

    private IPEndPoint Upstream => (IPEndPoint)_udp.LocalEndPoint!;

    private DnsForwarder Forwarder() =>
        new([Upstream], null, new LocalNames(IPAddress.Parse("192.168.65.2"), [], [], null, hostLoopback: true), NullLogger.Instance);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AQueryIsAnsweredByAnUpstreamOnTheHostsIpv6Loopback(bool overTcp)
    {
        byte[]? reply = await Forwarder().ResolveAsync(Query(0x1234), overTcp, TestContext.Current.CancellationToken);
        Assert.NotNull(reply);
        Assert.Equal(0x1234, BinaryPrimitives.ReadUInt16BigEndian(reply));
        Assert.Equal([10, 11, 12, 13], reply[^4..]); // the upstream's A record
        Assert.Equal((overTcp ? 0 : 1, overTcp ? 1 : 0), (Volatile.Read(ref _udpQueries), Volatile.Read(ref _tcpQueries)));
    }

    private static byte[] Query(ushort id)
    {
        // Header (id, RD), one question: v6.example. A IN.
        byte[] q = [0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, (byte)'v', (byte)'6', 7, .. "example"u8, 0, 0, 1, 0, 1];
        BinaryPrimitives.WriteUInt16BigEndian(q, id);
        return q;
    }

    /// <summary>The query turned into a response with one answer: the name (a pointer to the question), A, 10.11.12.13.</summary>
    private static byte[] Answer(ReadOnlySpan<byte> query)
    {
        byte[] r = [.. query, 0xC0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 11, 12, 13];
        r[2] = 0x81;
        r[3] = 0x80;
        r[7] = 1;
        return r;
    }

    private async Task ServeUdpAsync()
    {
        byte[] buffer = new byte[512];
        try
        {
            while (true)
            {
                SocketReceiveFromResult got = await _udp.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.IPv6Any, 0), _stop.Token);
                Interlocked.Increment(ref _udpQueries);
                await _udp.SendToAsync(Answer(buffer.AsSpan(0, got.ReceivedBytes)), got.RemoteEndPoint, _stop.Token);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    private async Task ServeTcpAsync()
    {
        try
        {
            while (true)
            {
                using TcpClient client = await _tcp.AcceptTcpClientAsync(_stop.Token);
                NetworkStream s = client.GetStream();
                // RFC 1035 §4.2.2: a two-byte length before each message.
                byte[] length = new byte[2];
                await s.ReadExactlyAsync(length, _stop.Token);
                byte[] query = new byte[BinaryPrimitives.ReadUInt16BigEndian(length)];
                await s.ReadExactlyAsync(query, _stop.Token);
                Interlocked.Increment(ref _tcpQueries);
                byte[] answer = Answer(query);
                byte[] framed = new byte[2 + answer.Length];
                BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)answer.Length);
                answer.CopyTo(framed, 2);
                await s.WriteAsync(framed, _stop.Token);
            }
        }
        catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }
}
