using System.Net;
using System.Net.Sockets;
using System.Diagnostics;
using Kit.VpnKit.Inspect;
using Kit.VpnKit.Links;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Nat;

/// <summary>
/// Carries one terminated guest TCP connection to a non-blocking host socket, both ways, with back-pressure: guest
/// bytes are taken from the engine only while the socket accepts them (the engine's window shrinks meanwhile), and
/// host bytes are read only as far as the engine's bounded send buffer has room.
/// Guest FIN becomes shutdown(SHUT_WR) and host EOF becomes FIN (half-close); a reset on either side resets the other.
/// <para>
/// Every method runs under the engine lock, on whichever thread holds it: the event loop when the socket is ready
/// (edge-triggered epoll: a direction waits for an event only after the kernel said EAGAIN), or the thread that just
/// fed the engine a guest segment. So a request goes guest frame → engine → send(2) on one thread, and a reply
/// goes recv(2) → engine → frame on one thread, with no hand-off and no allocation per packet.
/// </para>
/// </summary>
internal sealed partial class TcpProxy : IPollHandler
{
    private const uint Interest = Epoll.In | Epoll.Out | Epoll.RdHup | Epoll.EdgeTriggered;

    private enum Phase
    {
        Connecting,
        /// <summary>Adopted for a published port: waiting for the guest's SYN-ACK.</summary>
        Opening,
        Running,
        Closed,
    }

    private readonly EngineGate _gate;
    private readonly NatHost _nat;
    private TcpSocket _c;
    /// <summary>
    /// A published port's second choice (a [::1] publish tried the guest's IPv6 address first): opened, once, if the
    /// guest refuses the first SYN. Null for every other connection.
    /// </summary>
    private Func<long, TcpSocket?>? _fallback;
    private bool _reopen;
    private Socket _socket;
    private readonly ILogger _log;
    private Phase _phase;
    private ulong _token;
    private IpAddr _address;
    private ushort _port;

    // Readiness as the kernel last reported it: cleared on EAGAIN, set by the next epoll edge. The socket is watched
    // from before it can carry data (ET reports readiness present at registration too), so it starts unreadable, and
    // a connection whose peer sends nothing first costs no recv(2) that would only say EAGAIN.
    private bool _canRecv;
    // The host shut its sending side (EPOLLRDHUP/EPOLLHUP came): after the data, a recv(2) returns 0.
    private bool _peerShut;
    private bool _canSend = true;
    /// <summary>The last engine write said more host bytes follow (a short last segment is held for them).</summary>
    private bool _holding;
    private bool _guestDone;
    private bool _hostDone;

    // The inspector's record of this flow and its stream tap (null when the inspector is off): told what moved after it
    // moved, read-only (docs/vpnkit.md, "Inspector").
    private Inspector? _inspector;
    private FlowRecord? _flow;
    private StreamTap? _tap;

    /// <summary>Queued in the NAT's run list (engine callbacks asked for a pump).</summary>
    internal bool Queued;
    internal long ConnectDeadline;

    private TcpProxy(EngineGate gate, NatHost nat, TcpSocket connection, Socket socket, ILogger log, Phase phase)
    {
        _gate = gate;
        _nat = nat;
        _c = connection;
        _socket = socket;
        _log = log;
        _phase = phase;
        connection.Tag = this;
    }

    public TcpSocket Connection => _c;

    public bool Connecting => _phase == Phase.Connecting;

    /// <summary>The host socket's local port (the gateway's own relays tell their flows apart by it).</summary>
    internal int LocalPort => HostSocket.LocalPort(_socket);

    /// <summary>Records this flow in the inspector (before any byte moves).</summary>
    public void Observe(Inspector inspector, FlowRecord flow)
    {
        _inspector = inspector;
        _flow = flow;
        _tap = inspector.TapFor(flow);
        if (_phase == Phase.Opening)
        {
            flow.ConnectedTicks = flow.StartTicks; // An accepted host socket is connected already.
        }
    }

    /// <summary>
    /// Outbound (guest-initiated): starts a non-blocking connect; the guest sees SYN-ACK only once it succeeds.
    /// Returns null when the socket cannot even be created or watched (the caller refuses the guest's SYN).
    /// </summary>
    public static TcpProxy? Connect(EngineGate gate, NatHost nat, EventLoop loop, TcpSocket c, IpAddr address, ushort port, long deadline, ILogger log)
    {
        if (NewStreamSocket(address, log) is not Socket socket)
        {
            return null;
        }
        var p = new TcpProxy(gate, nat, c, socket, log, Phase.Connecting) { _address = address, _port = port, ConnectDeadline = deadline };
        if (!p.StartConnect(loop))
        {
            socket.Dispose();
            c.Tag = null;
            return null;
        }
        return p;
    }

    /// <summary>A non-blocking stream socket of the address's family, or null (logged) when the host refuses one.</summary>
    private static Socket? NewStreamSocket(IpAddr address, ILogger log)
    {
        try
        {
            return new Socket(address.IsV4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)
            {
                Blocking = false,
                NoDelay = true,
            };
        }
        catch (SocketException e)
        {
            LogSocketFailed(log, e.Message);
            return null;
        }
    }

    /// <summary>
    /// Starts connecting <see cref="_socket"/> to the host address and watches it; false when it cannot be watched.
    /// A connect that finished or failed at once (loopback; no route, ...) is reported from the run list, after the
    /// caller has set the flow up, through the same path as an outcome epoll reports.
    /// </summary>
    private bool StartConnect(EventLoop loop)
    {
        HostSocket.ConnectStart start = HostSocket.StartConnect(_socket, _address, _port, out string? error);
        _failure = error;
        _connected = start == HostSocket.ConnectStart.Connected;
        // Watched only after connect(2) started: an unconnected TCP socket polls as EPOLLHUP, which would read as a
        // finished (failed) connect.
        if (!Watch(loop))
        {
            return false;
        }
        if (_failure is not null || _connected)
        {
            _nat.Queue(this);
        }
        return true;
    }

    /// <summary>Why the connect failed synchronously; the run list reports it to the engine.</summary>
    private string? _failure;
    /// <summary>The connect finished synchronously; the run list reports it to the engine.</summary>
    private bool _connected;

    /// <summary>Inbound (published port): an accepted host socket for an engine-opened connection.</summary>
    public static TcpProxy? Adopt(EngineGate gate, NatHost nat, EventLoop loop, TcpSocket c, Socket accepted, Func<long, TcpSocket?>? fallback, ILogger log)
    {
        accepted.Blocking = false;
        accepted.NoDelay = true;
        var p = new TcpProxy(gate, nat, c, accepted, log, Phase.Opening) { _fallback = fallback };
        if (!p.Watch(loop))
        {
            accepted.Dispose();
            return null;
        }
        return p;
    }

    private bool Watch(EventLoop loop)
    {
        _token = loop.Register(this);
        // The raw descriptor is used only for epoll_ctl, under the engine lock, while _socket is open (it is closed
        // under the same lock, which also drops the registration).
        int fd = (int)_socket.SafeHandle.DangerousGetHandle();
        if (loop.Watch(fd, Interest, _token))
        {
            return true;
        }
        loop.Unregister(_token);
        return false;
    }

    private EventLoop Loop => _nat.Loop!;

    /// <summary>The socket is ready (event loop, under the engine lock).</summary>
    public void OnReady(uint events, long now)
    {
        if ((events & (Epoll.In | Epoll.RdHup | Epoll.Hup | Epoll.Err)) != 0)
        {
            _canRecv = true;
        }
        if ((events & (Epoll.RdHup | Epoll.Hup)) != 0)
        {
            _peerShut = true;
        }
        if ((events & (Epoll.Out | Epoll.Hup | Epoll.Err)) != 0)
        {
            _canSend = true;
        }
        if (_phase == Phase.Connecting)
        {
            // The SYN-ACK waits for the host (connect-before-accept): writable means connected; an error or a hang-up
            // means refused or unreachable.
            if ((events & (Epoll.Err | Epoll.Hup)) != 0)
            {
                FinishConnect(false, now, ConnectError() is int e && e != 0 ? ((SocketError)e).ToString() : "hang-up");
            }
            else if ((events & Epoll.Out) != 0)
            {
                FinishConnect(true, now, null);
            }
            return;
        }
        Run(now);
    }

    private int ConnectError()
    {
        try
        {
            return _socket.GetSocketOption(SocketOptionLevel.Socket, SocketOptionName.Error) is int e ? e : -1;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            return -1;
        }
    }

    /// <summary>The connect finished (or timed out): SYN-ACK or RST for the guest.</summary>
    public void FinishConnect(bool ok, long now, string? failure)
    {
        if (_phase != Phase.Connecting)
        {
            return;
        }
        if (!ok && failure != TimedOut && _address == HostLoopback6 && RetryOnIpv4Loopback())
        {
            return;
        }
        if (!ok)
        {
            LogConnectFailed(_log, _address.ToIPAddress(), _port, failure ?? "failed");
            if (_flow is not null)
            {
                _inspector!.CloseFlow(_flow, failure == TimedOut ? FlowEnd.Timeout : FlowEnd.Refused);
            }
        }
        else if (_flow is not null)
        {
            _flow.ConnectedTicks = Stopwatch.GetTimestamp();
        }
        _nat.ConnectDone(this);
        if (!_c.CompleteConnect(ok, now))
        {
            Close(abortive: false);
            return;
        }
        _phase = Phase.Running;
        Run(now);
    }

    /// <summary>The host's ::1, where the host alias's IPv6 address leads (NatHost).</summary>
    private static readonly IpAddr HostLoopback6 = IpAddr.V6(1);

    /// <summary>
    /// The host alias's IPv6 address leads to the host's ::1, but many host services listen on 127.0.0.1 (or 0.0.0.0)
    /// only, and a dual-stack guest tries the alias's IPv6 address first (glibc's RFC 6724 order puts a ULA before
    /// IPv4). So a connect to ::1 that did not succeed is tried once more on 127.0.0.1, still before the guest's SYN is
    /// answered (connect-before-accept), as a dual-stack client on the host itself would fall back. False: the IPv4
    /// socket could not even be started, and the guest gets the first failure.
    /// </summary>
    private bool RetryOnIpv4Loopback()
    {
        IpAddr loopback = IpAddr.V4(0x7F000001);
        if (NewStreamSocket(loopback, _log) is not Socket socket)
        {
            return false;
        }
        // Closing the IPv6 socket drops it from the epoll set; a stale event for its token is ignored.
        _socket.Dispose();
        Loop.Unregister(_token);
        _socket = socket;
        _address = loopback;
        if (!StartConnect(Loop))
        {
            _failure ??= "cannot watch the socket";
            _nat.Queue(this);
        }
        return true;
    }

    /// <summary>An engine-opened (inbound) connection reached ESTABLISHED: start carrying bytes.</summary>
    public void Established()
    {
        if (_phase == Phase.Opening)
        {
            _phase = Phase.Running;
        }
    }

    /// <summary>Moves whatever can move now, both ways (engine callbacks or socket readiness asked for it).</summary>
    public void Run(long now)
    {
        if (_reopen)
        {
            Reopen(now);
            return;
        }
        if (_phase == Phase.Connecting && (_failure is not null || _connected))
        {
            FinishConnect(_connected, now, _failure);
            return;
        }
        if (_phase != Phase.Running)
        {
            return;
        }
        if (!_guestDone)
        {
            GuestToHost(now);
        }
        if (!_hostDone && _phase == Phase.Running)
        {
            HostToGuest(now);
        }
        if (_guestDone && _hostDone && _phase == Phase.Running)
        {
            Close(abortive: false);
        }
        else if (_flow is not null)
        {
            Counters(_flow);
        }
    }

    private void Counters(FlowRecord f)
    {
        f.PacketsOut = _c.SegmentsReceived;
        f.PacketsIn = _c.SegmentsSent;
        f.RttMs = _c.SmoothedRtt;
    }

    internal const string TimedOut = "timed out";

    /// <summary>The gateway is stopping: reset the host socket, recorded as closed rather than reset.</summary>
    public void Stop()
    {
        if (_flow is not null)
        {
            _inspector!.CloseFlow(_flow, FlowEnd.Closed);
        }
        OnReset();
    }

    private void GuestToHost(long now)
    {
        Gateway engine = _gate.Engine;
        try
        {
            while (_canSend)
            {
                if (_c.IsReset)
                {
                    _guestDone = true;
                    return;
                }
                // Sent straight from the engine's buffer; what the socket does not take stays there (the guest's
                // window stays shut meanwhile) until EPOLLOUT.
                ReadOnlySpan<byte> data = _c.Peek();
                if (data.IsEmpty)
                {
                    if (_c.GuestFinished && _c.Readable == 0)
                    {
                        _socket.Shutdown(SocketShutdown.Send);
                        _guestDone = true;
                    }
                    return; // Until the engine has more (TcpReadable).
                }
                // A flow with a policy still to decide (sni/host) or a rule's impairment may send less, or nothing yet.
                int allowed = _pendingPolicy is null && _shape is null ? data.Length : OutboundAllowance(data, now);
                if (allowed == 0)
                {
                    return;
                }
                int sent = _socket.Send(data[..allowed], SocketFlags.None, out SocketError err);
                if (err == SocketError.WouldBlock)
                {
                    _canSend = false;
                    return;
                }
                if (err != SocketError.Success)
                {
                    Abort(now);
                    return;
                }
                if (_flow is not null)
                {
                    // What the host socket took, before the engine lets go of it.
                    _flow.BytesOut += sent;
                    _tap?.FromGuest(data[..sent]);
                }
                _c.Consume(sent, now);
                if (_shape is { } shape)
                {
                    Sent(shape, sent, now);
                }
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Abort(now);
        }
    }

    private void HostToGuest(long now)
    {
        try
        {
            if (_shape is { } shape)
            {
                ShapedHostToGuest(shape, now);
            }
            else
            {
                HostToGuestTurn(now);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Abort(now);
        }
    }

    private void HostToGuestTurn(long now)
    {
        Gateway engine = _gate.Engine;
        while (_canRecv)
        {
            if (!_c.CanWrite)
            {
                _hostDone = true; // The engine can carry no more (reset, or closed): nothing left to read for.
                return;
            }
            // Read straight into the engine's send buffer, only as far as it has room: the rest waits in the socket
            // (the host's window shrinks) until the guest's ACKs drain it and the engine says so (TcpWritable).
            Span<byte> room = _c.WriteSpace();
            if (room.IsEmpty)
            {
                Release(now);
                return;
            }
            int n = _socket.Receive(room, SocketFlags.None, out SocketError err);
            if (err == SocketError.WouldBlock)
            {
                _canRecv = false;
                _holding = false;
                _c.Commit(0, now); // Sends a held segment; gives back storage a ring did not need.
                return;
            }
            if (err != SocketError.Success)
            {
                Abort(now);
                return;
            }
            if (n == 0)
            {
                _holding = false;
                _c.Commit(0, now);
                _c.Shutdown(now);
                _hostDone = true;
                return;
            }
            if (_flow is not null)
            {
                _flow.BytesIn += n;
                _tap?.FromHost(room[..n]);
            }
            // A full read: the socket probably holds more, which the next read takes at once, so a short last
            // segment may wait for it (bulk data leaves in full segments). A short read drained the socket: the
            // next bytes bring a new edge, so stop here without another recv(2) that would only say EAGAIN --
            // unless the host has already shut down: its end came in the same edge as the data and brings no edge
            // of its own, so read on to the 0 that says so (or the guest never gets its FIN).
            bool more = n == room.Length;
            _c.Commit(n, now, more);
            _holding = more;
            if (!more && !_peerShut)
            {
                _canRecv = false;
            }
        }
    }

    /// <summary>Sends a segment the engine held back for bytes that did not come.</summary>
    private void Release(long now)
    {
        if (_holding)
        {
            _holding = false;
            _c.Commit(0, now);
        }
    }

    /// <summary>The host socket failed: reset the guest side.</summary>
    private void Abort(long now)
    {
        if (_phase == Phase.Closed)
        {
            return;
        }
        _c.Abort(now);
        Close(abortive: true);
    }

    /// <summary>The engine reset the connection: drop the host socket with RST (linger 0). Called inside the engine.</summary>
    public void OnReset()
    {
        if (_phase == Phase.Opening && _fallback is not null)
        {
            // The guest refused the published port on its first address (a service listening on IPv4 only, while the
            // [::1] publish tried IPv6): the host client's connection stays, and the second address is tried once the
            // engine call returns (the engine's tables are not changed from inside its own callback).
            _c.Tag = null;
            _reopen = true;
            _nat.Queue(this);
            return;
        }
        if (_phase == Phase.Connecting)
        {
            _nat.ConnectDone(this);
        }
        Close(abortive: true);
    }

    /// <summary>Opens the fallback connection to the guest and carries on with it, or gives the host client a reset.</summary>
    private void Reopen(long now)
    {
        _reopen = false;
        Func<long, TcpSocket?> open = _fallback!;
        _fallback = null;
        if (_phase != Phase.Opening)
        {
            return;
        }
        if (_flow is not null)
        {
            _inspector!.CloseFlow(_flow, FlowEnd.Refused);
        }
        if (open(now) is not TcpSocket c)
        {
            _flow = null;
            Close(abortive: true);
            return;
        }
        _c = c;
        c.Tag = this;
        if (_inspector is not null)
        {
            Observe(_inspector, _inspector.OpenFlow("tcp", c.GuestIp, c.GuestPort, c.RemoteIp, c.RemotePort, inbound: true));
        }
    }

    private void Close(bool abortive)
    {
        if (_phase == Phase.Closed)
        {
            return;
        }
        _phase = Phase.Closed;
        if (_flow is not null)
        {
            Counters(_flow);
            _tap?.Closed();
            _inspector!.CloseFlow(_flow, Ended(abortive));
        }
        DisposeShape();
        if (abortive)
        {
            try
            {
                _socket.LingerState = new LingerOption(true, 0);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }
        // Closing the descriptor also drops it from the epoll set; a stale event for the token is ignored.
        _socket.Dispose();
        Loop.Unregister(_token);
        _nat.Forget(this);
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "host connect to {Address}:{Port} failed: {Reason}")]
    private static partial void LogConnectFailed(ILogger log, IPAddress address, int port, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "no host socket for a guest connection: {Reason}")]
    private static partial void LogSocketFailed(ILogger log, string reason);
}
