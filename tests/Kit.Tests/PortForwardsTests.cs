using System.Net;
using System.Net.Sockets;
using Kit.Agent.Protocol;
using Kit.Cli.Machines;
using Kit.Testing;
using Kit.VpnKit;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.Tests;

/// <summary>
/// The forwarding policy of a machine against what its guest claims (issue 15, "Ports"): only wildcard or non-loopback
/// listeners, never a privileged host port without root, a busy host port reported and not fatal, static forwards first,
/// at most <see cref="PortForwards.MaxForwards"/>; and forwards go when the guest's listener goes.
/// </summary>
public sealed class PortForwardsTests : IDisposable
{
    private readonly VpnKitServer _server = new(new VpnKitServerOptions(), NullLoggerFactory.Instance);

    public void Dispose() => _server.Dispose();

    private static ListeningPort Tcp(int port, string address = "0.0.0.0") => new("tcp", address, port);

    [Fact]
    public void A_guest_cannot_take_a_privileged_host_port_unless_kit_is_root()
    {
        var forwards = new PortForwards(_server, privilegedAllowed: false);
        forwards.SetGuestListeners([Tcp(80)]);
        ForwardState state = Assert.Single(forwards.States);
        Assert.Contains("privileged", state.Problem, StringComparison.Ordinal);
        Assert.Empty(_server.Publishes);
    }

    [Fact]
    public void Loopback_and_impossible_listeners_are_not_forwarded_and_a_good_one_is()
    {
        int good = LoopbackPort.Free();
        var forwards = new PortForwards(_server, privilegedAllowed: false);
        forwards.SetGuestListeners([Tcp(LoopbackPort.Free(), "127.0.0.1"), Tcp(LoopbackPort.Free(), "::1"), Tcp(0), Tcp(70000),
            new ListeningPort("sctp", "0.0.0.0", LoopbackPort.Free()), Tcp(LoopbackPort.Free(), "bogus"), Tcp(good, "::")]);
        ForwardState state = Assert.Single(forwards.States);
        Assert.Equal((good, null, "auto"), (state.HostPort, state.Problem, state.Source));
        using var client = new TcpClient();
        client.Connect(IPAddress.Loopback, good); // VPNKit listens on the host's loopback now

        forwards.SetGuestListeners([]);
        Assert.Empty(forwards.States);
        Assert.Empty(_server.Publishes);
        Assert.Throws<SocketException>(() => new TcpClient().Connect(IPAddress.Loopback, good));
    }

    [Fact]
    public void A_busy_host_port_is_reported_not_fatal_and_taken_once_free()
    {
        int port = LoopbackPort.Free();
        var busy = new TcpListener(IPAddress.Loopback, port);
        busy.Start();
        var forwards = new PortForwards(_server, privilegedAllowed: false);
        forwards.SetGuestListeners([Tcp(port)]);
        Assert.Contains("in use", Assert.Single(forwards.States).Problem, StringComparison.Ordinal);
        busy.Stop();
        forwards.SetGuestListeners([Tcp(port)]);
        Assert.Null(Assert.Single(forwards.States).Problem);
    }

    [Fact]
    public void Static_forwards_win_their_host_port_and_the_total_is_bounded()
    {
        int host = LoopbackPort.Free();
        var forwards = new PortForwards(_server, privilegedAllowed: false);
        forwards.SetStatic([new PortPublish(host, 8080, Udp: false)]);
        var claims = new List<ListeningPort> { Tcp(host) };
        for (int i = 0; i < 2000; i++)
        {
            claims.Add(Tcp(40000 + i));
        }
        forwards.SetGuestListeners(claims);
        Assert.Equal(PortForwards.MaxForwards, forwards.States.Count);
        ForwardState mine = forwards.States.Single(s => s.HostPort == host);
        Assert.Equal(("config", 8080), (mine.Source, mine.GuestPort));
    }
}
