using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Links;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Links;

/// <summary>The non-blocking connect the gateway starts for each guest SYN, against real loopback sockets of both families.</summary>
public sealed class HostSocketTests
{
    public static TheoryData<string> Loopbacks => ["127.0.0.1", "::1"];

    private static Socket NonBlocking(IPAddress a) => new(a.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { Blocking = false };

    [Theory]
    [MemberData(nameof(Loopbacks))]
    public void ALoopbackConnectIsKnownToHaveSucceededAtOnce(string loopback)
    {
        IPAddress a = IPAddress.Parse(loopback);
        using var listener = new TcpListener(a, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        for (int i = 0; i < 20; i++)
        {
            using Socket s = NonBlocking(a);
            // The guest's SYN-ACK may then go in the same loop turn: no wait for epoll to say the socket is writable.
            Assert.Equal(HostSocket.ConnectStart.Connected, HostSocket.StartConnect(s, IpAddr.From(a), port, out string? error));
            Assert.Null(error);
            using Socket accepted = listener.AcceptSocket();
            Assert.Equal(HostSocket.LocalPort(s), ((IPEndPoint)accepted.RemoteEndPoint!).Port);
            s.Send("x"u8);
            Assert.Equal(1, accepted.Receive(new byte[1]));
        }
    }

    [Theory]
    [MemberData(nameof(Loopbacks))]
    public void ARefusedLoopbackConnectFailsAtOnceWithTheReason(string loopback)
    {
        IPAddress a = IPAddress.Parse(loopback);
        ushort port;
        using (var probe = new TcpListener(a, 0))
        {
            probe.Start();
            port = (ushort)((IPEndPoint)probe.LocalEndpoint).Port;
        }
        using Socket s = NonBlocking(a);
        // The loopback's RST has come by the second connect(2): the guest's RST may leave in the same turn.
        Assert.Equal(HostSocket.ConnectStart.Failed, HostSocket.StartConnect(s, IpAddr.From(a), port, out string? error));
        Assert.Equal("Connection refused", error);
    }
}
