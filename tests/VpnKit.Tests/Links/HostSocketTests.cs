using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Links;

namespace Kit.VpnKit.Tests.Links;

/// <summary>The non-blocking connect the gateway starts for each guest SYN, against real loopback sockets.</summary>
public sealed class HostSocketTests
{
    private const uint Loopback = 0x7F000001;

    private static Socket NonBlocking() => new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { Blocking = false };

    [Fact]
    public void ALoopbackConnectIsKnownToHaveSucceededAtOnce()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        ushort port = (ushort)((IPEndPoint)listener.LocalEndpoint).Port;
        for (int i = 0; i < 20; i++)
        {
            using Socket s = NonBlocking();
            // The guest's SYN-ACK may then go in the same loop turn: no wait for epoll to say the socket is writable.
            Assert.Equal(HostSocket.ConnectStart.Connected, HostSocket.StartConnect(s, Loopback, port, out string? error));
            Assert.Null(error);
            using Socket accepted = listener.AcceptSocket();
            s.Send("x"u8);
            Assert.Equal(1, accepted.Receive(new byte[1]));
        }
    }

    [Fact]
    public void ARefusedLoopbackConnectIsNeverReportedAsConnected()
    {
        ushort port;
        using (var probe = new TcpListener(IPAddress.Loopback, 0))
        {
            probe.Start();
            port = (ushort)((IPEndPoint)probe.LocalEndpoint).Port;
        }
        using Socket s = NonBlocking();
        // Refused: either at once or, as epoll will report, a moment later; never a SYN-ACK for the guest.
        Assert.NotEqual(HostSocket.ConnectStart.Connected, HostSocket.StartConnect(s, Loopback, port, out _));
    }
}
