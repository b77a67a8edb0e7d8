using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Stack;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// UDP NAT as vpnkit does it: one host socket per guest source (IP, port), endpoint-independent mapping and
/// filtering (replies from any remote come back, which keeps hole punching working). Flows idle past the timeout
/// are closed; at the cap the oldest quarter is closed at once, so chatty random-port guests cannot exhaust fds.
/// </summary>
internal sealed partial class UdpNat : IDisposable
{
    private readonly EngineGate _gate;
    private readonly Func<uint, uint> _translateOut;
    private readonly Func<uint, uint> _translateIn;
    private readonly ILogger _log;
    private readonly object _flowsGate = new();
    private readonly Dictionary<ulong, Flow> _flows = [];
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

    /// <summary>Told of every flow and datagram (null: the inspector is off).</summary>
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

    private sealed class Flow(uint guestIp, ushort guestPort, Socket socket)
    {
        public readonly uint GuestIp = guestIp;
        public readonly ushort GuestPort = guestPort;
        public readonly Socket Socket = socket;
        public long LastUsed;
        public readonly SocketAddress Target = new(AddressFamily.InterNetwork);
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
    public void Send(in UdpFlow flow, ReadOnlySpan<byte> payload)
    {
        ulong key = ((ulong)flow.GuestIp << 16) | flow.GuestPort;
        Flow? f;
        lock (_flowsGate)
        {
            if (!_flows.TryGetValue(key, out f))
            {
                if (_flows.Count >= _maxFlows)
                {
                    EvictOldest(_flows.Count - (_maxFlows * 3 / 4));
                }
                Socket s;
                try
                {
                    s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                    s.Bind(new IPEndPoint(IPAddress.Any, 0));
                }
                catch (SocketException e)
                {
                    LogSocketFailed(_log, e.Message);
                    return;
                }
                f = new Flow(flow.GuestIp, flow.GuestPort, s) { Record = Inspector?.OpenFlow("udp", flow.GuestIp, flow.GuestPort, flow.RemoteIp, flow.RemotePort) };
                _flows[key] = f;
                _ = ReceiveLoopAsync(f);
            }
            f.LastUsed = EngineGate.Now;
        }
        if (f.Record is { } r)
        {
            r.PacketsOut++;
            r.BytesOut += payload.Length;
        }
        uint dst = _translateOut(flow.RemoteIp);
        WriteAddress(f.Target, dst, flow.RemotePort);
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
        var from = new SocketAddress(AddressFamily.InterNetwork);
        try
        {
            while (true)
            {
                int n = await f.Socket.ReceiveFromAsync(buffer, SocketFlags.None, from).ConfigureAwait(false);
                ReadAddress(from, out uint ip, out ushort port);
                var back = new UdpFlow(f.GuestIp, f.GuestPort, _translateIn(ip), port);
                lock (_gate.Sync)
                {
                    _gate.Engine.SendUdp(back, buffer.AsSpan(0, n), EngineGate.Now);
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
            List<ulong>? dead = null;
            foreach (KeyValuePair<ulong, Flow> kv in _flows)
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
            foreach (ulong k in dead)
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
        var all = new List<KeyValuePair<ulong, Flow>>(_flows);
        all.Sort((a, b) => a.Value.LastUsed.CompareTo(b.Value.LastUsed));
        for (int i = 0; i < count && i < all.Count; i++)
        {
            _flows.Remove(all[i].Key);
            End(all[i].Value, FlowEnd.Timeout);
            all[i].Value.Socket.Dispose();
        }
    }

    internal static void WriteAddress(SocketAddress a, uint ip, ushort port)
    {
        Span<byte> b = a.Buffer.Span;
        BinaryPrimitives.WriteUInt16BigEndian(b.Slice(2), port);
        BinaryPrimitives.WriteUInt32BigEndian(b.Slice(4), ip);
    }

    internal static void ReadAddress(SocketAddress a, out uint ip, out ushort port)
    {
        ReadOnlySpan<byte> b = a.Buffer.Span;
        port = BinaryPrimitives.ReadUInt16BigEndian(b.Slice(2));
        ip = BinaryPrimitives.ReadUInt32BigEndian(b.Slice(4));
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
