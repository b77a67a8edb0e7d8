using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// Forwards guest echo requests to real destinations through one host socket: an unprivileged ICMP datagram socket
/// (<c>socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP)</c>, allowed when net.ipv4.ping_group_range holds our group) first,
/// else a raw ICMP socket (CAP_NET_RAW). The mode is logged; when neither opens, one warning says so and pings to
/// remote addresses get no reply (the gateway and host alias still answer: the engine does that itself).
/// Replies are matched to the guest's echo through <see cref="IcmpEchoMap"/> (the outgoing sequence is the key).
/// NAT66 has a second forwarder of the same kind for ICMPv6 (RFC 4443 §4.1 echo, type 128/129): AF_INET6 ping sockets
/// are governed by the same net.ipv4.ping_group_range, and the kernel computes the ICMPv6 checksum for both socket
/// kinds (a raw ICMPv6 socket always does, RFC 3542 §3.1), and hands over the message without the IPv6 header.
/// </summary>
internal sealed partial class IcmpForwarder : IDisposable
{
    private readonly EngineGate _gate;
    private readonly Socket _socket;
    private readonly bool _raw;
    private readonly bool _v6;
    private readonly IcmpEchoMap _map = new();
    private readonly byte[] _tx = new byte[65536];

    // A raw socket sees every echo reply the host receives; ours carry this identifier. (A datagram socket's identifier
    // is its kernel-chosen port, and the kernel only hands it the replies that carry it.)
    private readonly ushort _rawId = (ushort)(Environment.ProcessId ^ 0x4B49);

    private IcmpForwarder(EngineGate gate, Socket socket, bool raw)
    {
        _gate = gate;
        _socket = socket;
        _raw = raw;
        _v6 = socket.AddressFamily == AddressFamily.InterNetworkV6;
        // .NET needs a bound socket before ReceiveFrom; for a ping socket, binding port 0 lets the kernel pick the id.
        _socket.Bind(new IPEndPoint(_v6 ? IPAddress.IPv6Any : IPAddress.Any, 0));
        _ = ReceiveLoopAsync();
    }

    /// <summary>Told of every reply delivered (null: the inspector is off).</summary>
    public Kit.VpnKit.Inspect.Inspector? Inspector { get; set; }

    public string Mode => (_raw ? "raw ICMP socket (root)" : "unprivileged ICMP datagram socket") + (_v6 ? ", IPv6" : "");

    /// <summary>Opens the best available socket (ICMPv6 with <paramref name="ipv6"/>), or returns null with the reason logged.</summary>
    public static IcmpForwarder? TryCreate(EngineGate gate, ILogger log, bool ipv6 = false)
    {
        AddressFamily family = ipv6 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork;
        ProtocolType protocol = ipv6 ? ProtocolType.IcmpV6 : ProtocolType.Icmp;
        string dgramError;
        try
        {
            var f = new IcmpForwarder(gate, new Socket(family, SocketType.Dgram, protocol), raw: false);
            LogMode(log, f.Mode);
            return f;
        }
        catch (SocketException e)
        {
            dgramError = e.Message;
        }
        try
        {
            var f = new IcmpForwarder(gate, new Socket(family, SocketType.Raw, protocol), raw: true);
            LogMode(log, f.Mode);
            return f;
        }
        catch (SocketException e)
        {
            // One warning for one cause: ICMPv6 is refused when ICMP is (the same sysctl, the same capability).
            if (ipv6)
            {
                LogUnavailable6(log, dgramError, e.Message);
            }
            else
            {
                LogUnavailable(log, dgramError, PingGroupRange(), e.Message);
            }
            return null;
        }
    }

    private static string PingGroupRange()
    {
        try
        {
            return File.ReadAllText("/proc/sys/net/ipv4/ping_group_range").Trim().Replace('\t', ' ');
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return "unknown";
        }
    }

    /// <summary>
    /// Called under the engine lock. The guest may be of the other family than this socket (an IPv6 guest's echo to the
    /// host alias sent to 127.0.0.1): its reply goes back in the guest's family. False when the host could not send it.
    /// </summary>
    public bool Send(IpAddr guestIp, IpAddr hostDst, IpAddr guestVisibleDst, ushort id, ushort seq, ReadOnlySpan<byte> payload)
    {
        if (payload.Length + IcmpPacket.HeaderLength > _tx.Length)
        {
            return false;
        }
        ushort key = _map.Add(guestIp, guestVisibleDst, hostDst, id, seq);
        Span<byte> m = _tx.AsSpan(0, IcmpPacket.HeaderLength + payload.Length);
        payload.CopyTo(m.Slice(IcmpPacket.HeaderLength));
        // A datagram socket overwrites the identifier with its own and recomputes the checksum; a raw one sends as is
        // (ICMPv6: the kernel always writes the checksum).
        IcmpPacket.WriteEcho(m, IcmpPacket.TypeEchoRequest, _rawId, key);
        if (_v6)
        {
            m[0] = Icmpv6Type.EchoRequest;
            m[2] = 0;
            m[3] = 0;
        }
        try
        {
            _socket.SendTo(m, SocketFlags.None, new IPEndPoint(hostDst.ToIPAddress(), 0));
            return true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Unreachable networks and the like: the guest's ping times out, as it would on a real host.
            _map.TryTake(key, hostDst, out _);
            return false;
        }
    }

    private async Task ReceiveLoopAsync()
    {
        byte[] buffer = new byte[65536];
        EndPoint any = new IPEndPoint(_v6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
        try
        {
            while (true)
            {
                SocketReceiveFromResult r = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any).ConfigureAwait(false);
                if (r.RemoteEndPoint is IPEndPoint from)
                {
                    Deliver(buffer.AsSpan(0, r.ReceivedBytes), IpAddr.From(from.Address));
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>One datagram from the socket: ICMP or ICMPv6 (datagram mode, raw ICMPv6), or IPv4 + ICMP (raw mode).</summary>
    private void Deliver(ReadOnlySpan<byte> p, IpAddr from)
    {
        if (_raw && !_v6)
        {
            if (Ipv4Packet.TryParse(p, out Ipv4Packet ip, verifyChecksum: false) != Ipv4Error.None)
            {
                return;
            }
            p = ip.Payload;
        }
        // Echo request and reply share their layout in both versions (RFC 792, RFC 4443 §4): only the types differ.
        if (!IcmpPacket.TryParse(p, out IcmpPacket icmp) || icmp.Type != (_v6 ? Icmpv6Type.EchoReply : IcmpPacket.TypeEchoReply) || (_raw && icmp.Identifier != _rawId))
        {
            return;
        }
        lock (_gate.Sync)
        {
            if (_map.TryTake(icmp.Sequence, from, out IcmpEchoMap.Entry e))
            {
                if (!e.Guest.IsV4)
                {
                    _gate.Engine.SendIcmp6EchoReply(e.GuestVisibleDestination.Value, e.Guest.Value, e.Id, e.Sequence, icmp.Payload, EngineGate.Now);
                }
                else
                {
                    _gate.Engine.SendIcmpEchoReply(e.GuestVisibleDestination.Ipv4, e.Guest.Ipv4, e.Id, e.Sequence, icmp.Payload);
                    Inspector?.IcmpEcho(e.Guest.Ipv4, e.GuestVisibleDestination.Ipv4, icmp.Payload.Length, reply: true);
                }
            }
        }
    }

    public void Dispose() => _socket.Dispose();

    [LoggerMessage(Level = LogLevel.Information, Message = "ICMP echo forwarding: {Mode}")]
    private static partial void LogMode(ILogger log, string mode);

    [LoggerMessage(Level = LogLevel.Information, Message = "ICMPv6 echo forwarding unavailable: no ICMPv6 datagram socket ({DgramReason}) and no raw socket ({RawReason}); the host alias answers IPv6 pings itself, others get no reply")]
    private static partial void LogUnavailable6(ILogger log, string dgramReason, string rawReason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "ICMP echo forwarding unavailable: no ICMP datagram socket ({DgramReason}; net.ipv4.ping_group_range is \"{Range}\") and no raw socket ({RawReason}); pings to addresses other than the gateway and host alias get no reply")]
    private static partial void LogUnavailable(ILogger log, string dgramReason, string range, string rawReason);
}
