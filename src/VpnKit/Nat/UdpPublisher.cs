using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Nat;

/// <summary>
/// A published UDP port: datagrams from host clients go to the guest port, appearing to come from the host alias
/// with one pseudo source port per client; the guest's replies to that port go back to that client. Bounded.
/// A port published on the host's [::1] (<paramref name="preferIpv6"/>) sends to the guest's IPv6 address from the
/// host alias's IPv6 address once the gateway knows one (<see cref="Gateway.PublishTarget"/>), each datagram asking
/// anew, and to its IPv4 address before.
/// </summary>
internal sealed class UdpPublisher(EngineGate gate, Socket socket, ushort guestPort, bool preferIpv6, uint guestIp, uint hostIp, UInt128 hostIp6)
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
                    (IpAddr guest, IpAddr source) = gate.Engine.PublishTarget(preferIpv6);
                    if (guest.IsV4)
                    {
                        gate.Engine.SendUdp(new UdpFlow(guest.Ipv4, guestPort, source.Ipv4, pseudo), buffer.AsSpan(0, n), EngineGate.Now);
                    }
                    else
                    {
                        gate.Engine.SendUdp6(new Udp6Flow(guest.Value, guestPort, source.Value, pseudo), buffer.AsSpan(0, n), EngineGate.Now);
                    }
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>Called under the engine lock for every guest datagram; true if it was a reply for a host client.</summary>
    public bool TryDeliver(in UdpFlow flow, ReadOnlySpan<byte> payload) =>
        flow.GuestPort == guestPort && flow.GuestIp == guestIp && flow.RemoteIp == hostIp && SendToClient(flow.RemotePort, payload);

    /// <summary>
    /// The same for a guest datagram to the host alias's IPv6 address: from the published port of any of the guest's
    /// addresses (the guest's kernel picks the reply's source address, RFC 6724, which may not be the one asked).
    /// </summary>
    public bool TryDeliver6(in Udp6Flow flow, ReadOnlySpan<byte> payload) =>
        preferIpv6 && flow.GuestPort == guestPort && flow.RemoteIp == hostIp6 && SendToClient(flow.RemotePort, payload);

    private bool SendToClient(ushort pseudo, ReadOnlySpan<byte> payload)
    {
        SocketAddress? to;
        lock (_mapGate)
        {
            if (!_byPort.TryGetValue(pseudo, out to))
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

/// <summary>The UDP ports published on [::1], which the engine asks about guest datagrams to the host alias's IPv6 address.</summary>
internal sealed class PublishedUdp6 : IUdp6Replies
{
    /// <summary>Changed and read under the engine lock.</summary>
    public List<UdpPublisher> Publishers { get; } = [];

    public bool TryDeliver(in Udp6Flow flow, ReadOnlySpan<byte> payload)
    {
        foreach (UdpPublisher p in Publishers)
        {
            if (p.TryDeliver6(flow, payload))
            {
                return true;
            }
        }
        return false;
    }
}
