using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// UDP NAT as vpnkit does it: one host socket per guest source (IP, port), endpoint-independent mapping and
/// filtering (replies from any remote come back, which keeps hole punching working). Flows idle past the timeout
/// are closed; at the cap the oldest quarter is closed at once, so chatty random-port guests cannot exhaust fds.
/// IPv6 flows (NAT66) are the same flows in the same table (one cap for both families), with an AF_INET6 socket that
/// carries IPv6 only (IPV6_V6ONLY: it cannot be used to reach or hear IPv4).
/// </summary>
internal sealed partial class UdpNat : IDisposable
{
    private readonly EngineGate _gate;
    private readonly Func<uint, uint> _translateOut;
    private readonly Func<uint, uint> _translateIn;
    private readonly ILogger _log;
    private readonly object _flowsGate = new();
    private readonly Dictionary<(UInt128, ushort), Flow> _flows = [];
    private readonly int _maxFlows;
    private readonly long _idleMs;

    public UdpNat(EngineGate gate, Func<uint, uint> translateOut, Func<uint, uint> translateIn, ILogger log, int maxFlows = 1024, TimeSpan? idle = null)
    {
        _gate = gate;
        _translateOut = translateOut;
        _translateIn = translateIn;
        _log = log;
        _maxFlows = maxFlows;
        _idleMs = (long)(idle ?? TimeSpan.FromSeconds(60)).TotalMilliseconds;
    }

    /// <summary>Host-side IPv6 source → what the guest sees (the host's ::1 appears as the host alias).</summary>
    public Func<UInt128, UInt128> TranslateIn6 { get; init; } = ip => ip;

    /// <summary>Told of every IPv4 flow and datagram (null: the inspector is off; it does not record IPv6 yet).</summary>
    public Inspector? Inspector { get; set; }

    public int FlowCount
    {
        get
        {
            lock (_flowsGate)
            {
                return _flows.Count;
            }
        }
    }

    private sealed class Flow(IpAddr guestIp, ushort guestPort, Socket socket)
    {
        public readonly IpAddr GuestIp = guestIp;
        public readonly ushort GuestPort = guestPort;
        public readonly Socket Socket = socket;
        public long LastUsed;
        public readonly SocketAddress Target = new(socket.AddressFamily);
        public FlowRecord? Record;
    }

    private void End(Flow f, FlowEnd how)
    {
        if (f.Record is not null)
        {
            Inspector?.CloseFlow(f.Record, how);
        }
    }

    /// <summary>Called under the engine lock with a guest datagram; sends it from the flow's host socket.</summary>
    public void Send(in UdpFlow flow, ReadOnlySpan<byte> payload) =>
        Send(IpAddr.V4(flow.GuestIp), flow.GuestPort, IpAddr.V4(flow.RemoteIp), IpAddr.V4(_translateOut(flow.RemoteIp)), flow.RemotePort, payload);

    /// <summary>An IPv6 guest datagram (NAT66) to <paramref name="hostDestination"/>, the host-side address the NAT chose.</summary>
    public void Send6(in Udp6Flow flow, UInt128 hostDestination, ReadOnlySpan<byte> payload) =>
        Send(IpAddr.V6(flow.GuestIp), flow.GuestPort, IpAddr.V6(flow.RemoteIp), IpAddr.V6(hostDestination), flow.RemotePort, payload);

    private void Send(IpAddr guest, ushort guestPort, IpAddr remote, IpAddr dst, ushort remotePort, ReadOnlySpan<byte> payload)
    {
        Flow? f;
        lock (_flowsGate)
        {
            if (!_flows.TryGetValue((guest.Value, guestPort), out f))
            {
                if (_flows.Count >= _maxFlows)
                {
                    EvictOldest(_flows.Count - (_maxFlows * 3 / 4));
                }
                Socket s;
                try
                {
                    s = guest.IsV4 ? new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp)
                        : new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp) { DualMode = false };
                    s.Bind(new IPEndPoint(guest.IsV4 ? IPAddress.Any : IPAddress.IPv6Any, 0));
                }
                catch (SocketException e)
                {
                    LogSocketFailed(_log, e.Message);
                    return;
                }
                f = new Flow(guest, guestPort, s)
                {
                    Record = Inspector?.OpenFlow("udp", guest, guestPort, remote, remotePort),
                };
                _flows[(guest.Value, guestPort)] = f;
                _ = ReceiveLoopAsync(f);
            }
            f.LastUsed = EngineGate.Now;
        }
        if (f.Record is { } r)
        {
            r.PacketsOut++;
            r.BytesOut += payload.Length;
        }
        WriteAddress(f.Target, dst, remotePort);
        try
        {
            f.Socket.SendTo(payload, SocketFlags.None, f.Target);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // An unreachable destination or a full buffer loses this datagram, as the network would.
        }
    }

    private async Task ReceiveLoopAsync(Flow f)
    {
        byte[] buffer = ArrayPool<byte>.Shared.Rent(65536);
        var from = new SocketAddress(f.Socket.AddressFamily);
        try
        {
            while (true)
            {
                int n = await f.Socket.ReceiveFromAsync(buffer, SocketFlags.None, from).ConfigureAwait(false);
                ReadAddress(from, out IpAddr ip, out ushort port);
                lock (_gate.Sync)
                {
                    if (f.GuestIp.IsV4)
                    {
                        _gate.Engine.SendUdp(new UdpFlow(f.GuestIp.Ipv4, f.GuestPort, _translateIn(ip.Ipv4), port), buffer.AsSpan(0, n), EngineGate.Now);
                    }
                    else
                    {
                        _gate.Engine.SendUdp6(new Udp6Flow(f.GuestIp.Value, f.GuestPort, TranslateIn6(ip.Value), port), buffer.AsSpan(0, n), EngineGate.Now);
                    }
                    if (f.Record is { } r)
                    {
                        r.PacketsIn++;
                        r.BytesIn += n;
                    }
                }
                f.LastUsed = EngineGate.Now;
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Closes flows idle longer than the timeout; called periodically by the driver.</summary>
    public void Expire()
    {
        long now = EngineGate.Now;
        lock (_flowsGate)
        {
            List<(UInt128, ushort)>? dead = null;
            foreach (KeyValuePair<(UInt128, ushort), Flow> kv in _flows)
            {
                if (now - kv.Value.LastUsed > _idleMs)
                {
                    (dead ??= []).Add(kv.Key);
                }
            }
            if (dead is null)
            {
                return;
            }
            foreach ((UInt128, ushort) k in dead)
            {
                _flows.Remove(k, out Flow? f);
                if (f is not null)
                {
                    End(f, FlowEnd.Timeout);
                    f.Socket.Dispose();
                }
            }
        }
    }

    private void EvictOldest(int count)
    {
        var all = new List<KeyValuePair<(UInt128, ushort), Flow>>(_flows);
        all.Sort((a, b) => a.Value.LastUsed.CompareTo(b.Value.LastUsed));
        for (int i = 0; i < count && i < all.Count; i++)
        {
            _flows.Remove(all[i].Key);
            End(all[i].Value, FlowEnd.Timeout);
            all[i].Value.Socket.Dispose();
        }
    }

    /// <summary>Fills a struct sockaddr_in or sockaddr_in6 (ip(7), ipv6(7)): the port and address in network order.</summary>
    internal static void WriteAddress(SocketAddress a, IpAddr ip, ushort port)
    {
        Span<byte> b = a.Buffer.Span;
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(2), port);
        if (a.Family == AddressFamily.InterNetwork)
        {
            BinaryPrimitives.WriteUInt32BigEndian(b.Slice(4), ip.Ipv4);
        }
        else
        {
            BinaryPrimitives.WriteUInt128BigEndian(b.Slice(8), ip.Value);
        }
    }

    internal static void ReadAddress(SocketAddress a, out IpAddr ip, out ushort port)
    {
        ReadOnlySpan<byte> b = a.Buffer.Span;
        port = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(2));
        ip = a.Family == AddressFamily.InterNetwork ? IpAddr.V4(BinaryPrimitives.ReadUInt32BigEndian(b.Slice(4))) : IpAddr.V6(BinaryPrimitives.ReadUInt128BigEndian(b.Slice(8)));
    }

    public void Dispose()
    {
        lock (_flowsGate)
        {
            foreach (Flow f in _flows.Values)
            {
                End(f, FlowEnd.Closed);
                f.Socket.Dispose();
            }
            _flows.Clear();
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "cannot open a UDP socket: {Reason}")]
    private static partial void LogSocketFailed(ILogger log, string reason);
}
