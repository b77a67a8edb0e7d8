using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Tests.Stack;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Nat;

public sealed class UdpNatTests
{
    /// <summary>A guest spraying 5,000 source ports cannot hold more than the cap of host sockets.</summary>
    [Fact]
    public void FlowTableIsCappedUnderASourcePortSpray()
    {
        var gate = new EngineGate();
        gate.Engine = new Gateway(new GatewayOptions(), new CapturingSink(), new RecordingFlows());
        using var sink = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        ushort port = (ushort)((IPEndPoint)sink.Client.LocalEndPoint!).Port;
        using var nat = new UdpNat(gate, ip => ip == G.Host ? 0x7F000001 : ip, ip => ip, NullLogger.Instance, maxFlows: 256);
        int max = 0;
        for (int i = 0; i < 5000; i++)
        {
            lock (gate.Sync)
            {
                nat.Send(new UdpFlow(G.Guest, (ushort)(1024 + i), G.Host, port), [1, 2, 3]);
            }
            max = Math.Max(max, nat.FlowCount);
        }
        Assert.True(max <= 256, $"{max} flows");
        Assert.True(nat.FlowCount >= 192);
        // Datagrams really went out through the host sockets.
        sink.Client.ReceiveTimeout = 5000;
        IPEndPoint? from = null;
        Assert.Equal(new byte[] { 1, 2, 3 }, sink.Receive(ref from));
    }

    [Fact]
    public void RepliesComeBackToTheGuestFromTheHostAlias()
    {
        var gate = new EngineGate();
        var frames = new CapturingSink();
        gate.Engine = new Gateway(new GatewayOptions(), frames, new RecordingFlows());
        lock (gate.Sync)
        {
            gate.Engine.Receive(G.ArpRequest(G.Gateway), 0); // Learn the guest's MAC.
            frames.Take();
        }
        using var echo = new UdpClient(new IPEndPoint(IPAddress.Loopback, 0));
        ushort port = (ushort)((IPEndPoint)echo.Client.LocalEndPoint!).Port;
        using var nat = new UdpNat(gate, ip => ip == G.Host ? 0x7F000001 : ip, ip => (ip >> 24) == 127 ? G.Host : ip, NullLogger.Instance);
        lock (gate.Sync)
        {
            nat.Send(new UdpFlow(G.Guest, 5555, G.Host, port), "ping"u8);
        }
        echo.Client.ReceiveTimeout = 5000;
        IPEndPoint? from = null;
        byte[] got = echo.Receive(ref from);
        echo.Send("pong"u8.ToArray(), from!);
        for (int i = 0; i < 200; i++)
        {
            lock (gate.Sync)
            {
                if (frames.Frames.Count > 0)
                {
                    break;
                }
            }
            Thread.Sleep(10);
        }
        byte[] frame;
        lock (gate.Sync)
        {
            frame = Assert.Single(frames.Take());
        }
        Assert.Equal("ping", System.Text.Encoding.ASCII.GetString(got));
        var udp = PacketDotNet.Packet.ParsePacket(PacketDotNet.LinkLayers.Ethernet, frame).Extract<PacketDotNet.UdpPacket>();
        Assert.Equal("192.168.65.2", ((PacketDotNet.IPv4Packet)udp.ParentPacket).SourceAddress.ToString());
        Assert.Equal(port, udp.SourcePort);
        Assert.Equal(5555, udp.DestinationPort);
        Assert.Equal("pong", System.Text.Encoding.ASCII.GetString(udp.PayloadData));
    }
}
