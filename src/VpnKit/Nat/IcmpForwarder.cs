using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// Forwards guest echo requests to real destinations. Uses an unprivileged ICMP datagram socket when
/// net.ipv4.ping_group_range allows it, else a raw ICMP socket (root); the mode is logged. Echo identifiers are
/// rewritten to a gateway-wide counter and mapped back on reply; mappings are few and short-lived (bounded ring).
/// </summary>
internal sealed partial class IcmpForwarder : IDisposable
{
    private const int MapSize = 4096;
    private readonly EngineGate _gate;
    private readonly Socket _socket;
    private readonly bool _raw;
    private readonly (uint Guest, uint GuestVisibleDst, uint Dst, ushort Id)[] _map = new (uint, uint, uint, ushort)[MapSize];
    private readonly byte[] _tx = new byte[65536];
    private readonly ushort[] _seqs = new ushort[MapSize];
    private int _next;

    private IcmpForwarder(EngineGate gate, Socket socket, bool raw)
    {
        _gate = gate;
        _socket = socket;
        _raw = raw;
        _ = ReceiveLoopAsync();
    }

    public string Mode => _raw ? "raw ICMP socket (root)" : "unprivileged ICMP datagram socket";

    /// <summary>Opens the best available socket, or returns null with the reason logged.</summary>
    public static IcmpForwarder? TryCreate(EngineGate gate, ILogger log)
    {
        try
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Icmp);
            var f = new IcmpForwarder(gate, s, raw: false);
            LogMode(log, f.Mode);
            return f;
        }
        catch (SocketException)
        {
        }
        try
        {
            var s = new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp);
            var f = new IcmpForwarder(gate, s, raw: true);
            LogMode(log, f.Mode);
            return f;
        }
        catch (SocketException e)
        {
            LogUnavailable(log, e.Message);
            return null;
        }
    }

    /// <summary>Called under the engine lock.</summary>
    public void Send(uint guestIp, uint hostDst, uint guestVisibleDst, ushort id, ushort seq, ReadOnlySpan<byte> payload)
    {
        if (payload.Length + IcmpPacket.HeaderLength > _tx.Length)
        {
            return;
        }
        int slot = _next++ & (MapSize - 1);
        _map[slot] = (guestIp, guestVisibleDst, hostDst, id);
        Span<byte> m = _tx.AsSpan(0, IcmpPacket.HeaderLength + payload.Length);
        payload.CopyTo(m.Slice(IcmpPacket.HeaderLength));
        // The slot number is the outgoing identifier (datagram sockets replace it with their own; replies are matched
        // by sequence then, which carries the slot in that mode).
        IcmpPacket.WriteEcho(m, IcmpPacket.TypeEchoRequest, (ushort)slot, _raw ? seq : (ushort)slot);
        _seqs[slot] = seq;
        try
        {
            _socket.SendTo(m, SocketFlags.None, new IPEndPoint(NatHost.ToAddress(hostDst), 0));
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
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
                ReadOnlySpan<byte> p = buffer.AsSpan(0, r.ReceivedBytes);
                if (_raw)
                {
                    if (Ipv4Packet.TryParse(p, out Ipv4Packet ip, verifyChecksum: false) != Ipv4Error.None)
                    {
                        continue;
                    }
                    p = ip.Payload;
                }
                if (!IcmpPacket.TryParse(p, out IcmpPacket icmp) || icmp.Type != IcmpPacket.TypeEchoReply)
                {
                    continue;
                }
                int slot = (_raw ? icmp.Identifier : icmp.Sequence) & (MapSize - 1);
                lock (_gate.Sync)
                {
                    var (guest, visible, dst, id) = _map[slot];
                    if (guest == 0 || r.RemoteEndPoint is not IPEndPoint from || !from.Address.Equals(NatHost.ToAddress(dst)))
                    {
                        continue;
                    }
                    _map[slot] = default;
                    _gate.Engine.SendIcmpEchoReply(visible, guest, id, _seqs[slot], icmp.Payload);
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
    }

    public void Dispose() => _socket.Dispose();

    [LoggerMessage(Level = LogLevel.Information, Message = "ICMP echo forwarding uses an {Mode}")]
    private static partial void LogMode(ILogger log, string mode);

    [LoggerMessage(Level = LogLevel.Warning, Message = "ICMP echo forwarding unavailable (no ICMP datagram or raw socket: {Reason}); pings to remote addresses get no reply")]
    private static partial void LogUnavailable(ILogger log, string reason);
}
