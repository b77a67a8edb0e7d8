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
/// </summary>
internal sealed partial class IcmpForwarder : IDisposable
{
    private readonly EngineGate _gate;
    private readonly Socket _socket;
    private readonly bool _raw;
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
        // .NET needs a bound socket before ReceiveFrom; for a ping socket, binding port 0 lets the kernel pick the id.
        _socket.Bind(new IPEndPoint(IPAddress.Any, 0));
        _ = ReceiveLoopAsync();
    }

    /// <summary>Told of every reply delivered (null: the inspector is off).</summary>
    public Kit.VpnKit.Inspect.Inspector? Inspector { get; set; }

    public string Mode => _raw ? "raw ICMP socket (root)" : "unprivileged ICMP datagram socket";

    /// <summary>Opens the best available socket, or returns null with the reason logged.</summary>
    public static IcmpForwarder? TryCreate(EngineGate gate, ILogger log)
    {
        string dgramError;
        try
        {
            var f = new IcmpForwarder(gate, new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Icmp), raw: false);
            LogMode(log, f.Mode);
            return f;
        }
        catch (SocketException e)
        {
            dgramError = e.Message;
        }
        try
        {
            var f = new IcmpForwarder(gate, new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp), raw: true);
            LogMode(log, f.Mode);
            return f;
        }
        catch (SocketException e)
        {
            LogUnavailable(log, dgramError, PingGroupRange(), e.Message);
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

    /// <summary>Called under the engine lock.</summary>
    public void Send(uint guestIp, uint hostDst, uint guestVisibleDst, ushort id, ushort seq, ReadOnlySpan<byte> payload)
    {
        if (payload.Length + IcmpPacket.HeaderLength > _tx.Length)
        {
            return;
        }
        ushort key = _map.Add(guestIp, guestVisibleDst, hostDst, id, seq);
        Span<byte> m = _tx.AsSpan(0, IcmpPacket.HeaderLength + payload.Length);
        payload.CopyTo(m.Slice(IcmpPacket.HeaderLength));
        // A datagram socket overwrites the identifier with its own and recomputes the checksum; a raw one sends as is.
        IcmpPacket.WriteEcho(m, IcmpPacket.TypeEchoRequest, _rawId, key);
        try
        {
            _socket.SendTo(m, SocketFlags.None, new IPEndPoint(NatHost.ToAddress(hostDst), 0));
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Unreachable networks and the like: the guest's ping times out, as it would on a real host.
        }
    }

    private async Task ReceiveLoopAsync()
    {
        byte[] buffer = new byte[65536];
        EndPoint any = new IPEndPoint(IPAddress.Any, 0);
        try
        {
            while (true)
            {
                SocketReceiveFromResult r = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any).ConfigureAwait(false);
                if (r.RemoteEndPoint is IPEndPoint from)
                {
                    Deliver(buffer.AsSpan(0, r.ReceivedBytes), NatHost.FromAddress(from.Address));
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    /// <summary>One datagram from the socket: ICMP (datagram mode) or IPv4 + ICMP (raw mode).</summary>
    private void Deliver(ReadOnlySpan<byte> p, uint from)
    {
        if (_raw)
        {
            if (Ipv4Packet.TryParse(p, out Ipv4Packet ip, verifyChecksum: false) != Ipv4Error.None)
            {
                return;
            }
            p = ip.Payload;
        }
        if (!IcmpPacket.TryParse(p, out IcmpPacket icmp) || icmp.Type != IcmpPacket.TypeEchoReply || (_raw && icmp.Identifier != _rawId))
        {
            return;
        }
        lock (_gate.Sync)
        {
            if (_map.TryTake(icmp.Sequence, from, out IcmpEchoMap.Entry e))
            {
                _gate.Engine.SendIcmpEchoReply(e.GuestVisibleDestination, e.Guest, e.Id, e.Sequence, icmp.Payload);
                Inspector?.IcmpEcho(e.Guest, e.GuestVisibleDestination, icmp.Payload.Length, reply: true);
            }
        }
    }

    public void Dispose() => _socket.Dispose();

    [LoggerMessage(Level = LogLevel.Information, Message = "ICMP echo forwarding: {Mode}")]
    private static partial void LogMode(ILogger log, string mode);

    [LoggerMessage(Level = LogLevel.Warning, Message = "ICMP echo forwarding unavailable: no ICMP datagram socket ({DgramReason}; net.ipv4.ping_group_range is \"{Range}\") and no raw socket ({RawReason}); pings to addresses other than the gateway and host alias get no reply")]
    private static partial void LogUnavailable(ILogger log, string dgramReason, string range, string rawReason);
}
