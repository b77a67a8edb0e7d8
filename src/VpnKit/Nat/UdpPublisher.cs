using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Nat;

/// <summary>
/// A published UDP port: datagrams from host clients go to the guest port, appearing to come from the host alias
/// with one pseudo source port per client; the guest's replies to that port go back to that client. Bounded.
/// </summary>
internal sealed class UdpPublisher(EngineGate gate, Socket socket, uint guestIp, ushort guestPort, uint hostIp)
{
    private const int MaxClients = 256;
    private const ushort FirstPort = 61000;
    private readonly object _mapGate = new();
    private readonly Dictionary<(IpAddr Ip, ushort Port), ushort> _byClient = [];
    private readonly Dictionary<ushort, SocketAddress> _byPort = [];
    private ushort _next = FirstPort;

    public async Task RunAsync()
    {
        byte[] buffer = new byte[65536];
        var from = new SocketAddress(socket.AddressFamily);
        try
        {
            while (true)
            {
                int n = await socket.ReceiveFromAsync(buffer, SocketFlags.None, from).ConfigureAwait(false);
                UdpNat.ReadAddress(from, out IpAddr ip, out ushort port);
                ushort pseudo;
                lock (_mapGate)
                {
                    if (!_byClient.TryGetValue((ip, port), out pseudo))
                    {
                        if (_byClient.Count >= MaxClients)
                        {
                            _byClient.Clear();
                            _byPort.Clear();
                            _next = FirstPort;
                        }
                        pseudo = _next++;
                        _byClient[(ip, port)] = pseudo;
                        var copy = new SocketAddress(socket.AddressFamily);
                        UdpNat.WriteAddress(copy, ip, port);
                        _byPort[pseudo] = copy;
                    }
                }
                lock (gate.Sync)
                {
                    gate.Engine.SendUdp(new UdpFlow(guestIp, guestPort, hostIp, pseudo), buffer.AsSpan(0, n), EngineGate.Now);
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Called under the engine lock for every guest datagram; true if it was a reply for a host client.</summary>
    public bool TryDeliver(in UdpFlow flow, ReadOnlySpan<byte> payload)
    {
        if (flow.GuestPort != guestPort || flow.GuestIp != guestIp || flow.RemoteIp != hostIp)
        {
            return false;
        }
        SocketAddress? to;
        lock (_mapGate)
        {
            if (!_byPort.TryGetValue(flow.RemotePort, out to))
            {
                return false;
            }
        }
        try
        {
            socket.SendTo(payload, SocketFlags.None, to);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        return true;
    }
}
