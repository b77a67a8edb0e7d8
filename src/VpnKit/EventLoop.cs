using Kit.VpnKit.Links;
using Kit.VpnKit.Nat;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit;

/// <summary>Something the event loop watches; called on the loop thread, under the engine lock.</summary>
internal interface IPollHandler
{
    void OnReady(uint events, long now);
}

/// <summary>
/// The gateway's one event loop: a thread that waits in epoll for pollable links (the TAP device) and every host TCP
/// socket, and sleeps exactly until the engine's next timer. Whatever wakes it is handled there and then, under the
/// engine lock: a guest frame goes through the engine and on to a host socket's send(2), a readable socket's bytes go
/// through the engine and out as a frame, on this one thread. A request/response round trip thus costs two wake-ups
/// of the gateway (one per direction), the same as a C slirp, where a thread per link, a timer thread and the
/// runtime's socket thread plus thread pool used to take three to five hand-offs.
/// Other threads (links that can only block, UDP and ICMP relays, publish acceptors) still call the engine under the
/// same lock; <see cref="DeadlineMayHaveMoved"/> wakes the loop when they arm a timer sooner than it planned to wake.
/// </summary>
internal sealed class EventLoop : IDisposable
{
    private const int MaxEvents = 64;
    /// <summary>Frames read from one link per turn, so one busy link cannot starve the sockets.</summary>
    private const int MaxFramesPerTurn = 16;
    /// <summary>A frame at least this long (a full MTU 1500 segment or a TSO one) suggests more are queued behind it.</summary>
    private const int BulkFrame = 1400;
    private const int SweepMs = 10_000;
    private readonly EngineGate _gate;
    private readonly NatHost _nat;
    private readonly Switch _switch;
    private readonly MacAddress _gatewayMac;
    private readonly Action<ILink> _linkClosed;
    private readonly Epoll _epoll = new();
    private readonly List<IPollHandler?> _handlers = [];
    private readonly List<uint> _generations = [];
    private readonly Stack<int> _free = new();
    /// <summary>One frame buffer for every pollable link: used only on the loop thread.</summary>
    private readonly byte[] _frame = new byte[70_000];
    /// <summary>When the loop will wake by itself (under the lock); long.MinValue while it is awake.</summary>
    private long _wakeAt = long.MinValue;
    private volatile bool _stop;
    private Thread? _thread;

    public EventLoop(EngineGate gate, NatHost nat, Switch links, MacAddress gatewayMac, Action<ILink> linkClosed)
    {
        _gate = gate;
        _nat = nat;
        _switch = links;
        _gatewayMac = gatewayMac;
        _linkClosed = linkClosed;
    }

    public void Start()
    {
        _thread = new Thread(Run) { IsBackground = true, Name = "vpnkit-loop" };
        _thread.Start();
    }

    /// <summary>Under the engine lock: a token for <see cref="Watch"/> that leads events back to <paramref name="h"/>.</summary>
    public ulong Register(IPollHandler h)
    {
        int slot;
        if (_free.TryPop(out int s))
        {
            slot = s;
            _handlers[slot] = h;
        }
        else
        {
            slot = _handlers.Count;
            _handlers.Add(h);
            _generations.Add(0);
        }
        return ((ulong)_generations[slot] << 32) | (uint)slot;
    }

    /// <summary>Under the engine lock: events already fetched for the token are dropped (its generation moves on).</summary>
    public void Unregister(ulong token)
    {
        int slot = (int)(uint)token;
        if (slot < _handlers.Count && _generations[slot] == (uint)(token >> 32))
        {
            _handlers[slot] = null;
            _generations[slot]++;
            _free.Push(slot);
        }
    }

    public bool Watch(int fd, uint events, ulong token) => _epoll.Add(fd, events, token);

    /// <summary>Reads <paramref name="link"/> on the loop thread from now on (level-triggered: one frame per event).</summary>
    public void AddLink(IPollableLink link)
    {
        lock (_gate.Sync)
        {
            var reader = new LinkReader(this, link);
            reader.Token = Register(reader);
            reader.Fd = (int)link.BeginPolling().DangerousGetHandle();
            if (!_epoll.Add(reader.Fd, Epoll.In, reader.Token))
            {
                Unregister(reader.Token);
                throw new IOException($"cannot watch link {link.Name}");
            }
        }
    }

    /// <summary>Under the engine lock, from a thread other than the loop's, after an engine call.</summary>
    public void DeadlineMayHaveMoved()
    {
        long next = Math.Min(_gate.Engine.NextDeadline, _nat.NextDeadline);
        if (next < _wakeAt)
        {
            _wakeAt = next;
            _epoll.Wake();
        }
    }

    private void Run()
    {
        byte[] events = Epoll.NewEventBuffer(MaxEvents);
        long nextSweep = EngineGate.Now + SweepMs;
        int timeout = 0;
        while (!_stop)
        {
            int n;
            try
            {
                n = _epoll.Wait(events, timeout);
            }
            catch (ObjectDisposedException)
            {
                return; // Disposed while stopping.
            }
            long now;
            lock (_gate.Sync)
            {
                _wakeAt = long.MinValue;
                now = EngineGate.Now;
                for (int i = 0; i < n; i++)
                {
                    (uint ev, ulong token) = Epoll.EventAt(events, i);
                    if (token == Epoll.WakeToken)
                    {
                        _epoll.ClearWake();
                        continue;
                    }
                    int slot = (int)(uint)token;
                    if (slot < _handlers.Count && _generations[slot] == (uint)(token >> 32))
                    {
                        _handlers[slot]?.OnReady(ev, now);
                    }
                }
                _nat.RunQueued();
                Gateway engine = _gate.Engine;
                if (now >= engine.NextDeadline)
                {
                    engine.OnTimer(now);
                    _nat.RunQueued();
                }
                _nat.OnTimer(now);
                long next = Math.Min(Math.Min(engine.NextDeadline, _nat.NextDeadline), nextSweep);
                _wakeAt = next;
                timeout = (int)Math.Clamp(next - now, 0, int.MaxValue);
            }
            if (now >= nextSweep)
            {
                _nat.Udp.Expire();
                nextSweep = now + SweepMs;
            }
        }
    }

    public void Dispose()
    {
        _stop = true;
        _epoll.Wake();
        if (_thread is not null && _thread != Thread.CurrentThread)
        {
            _thread.Join(TimeSpan.FromSeconds(5));
        }
        _epoll.Dispose();
    }

    /// <summary>A pollable link's frames, fed to the engine on the loop thread.</summary>
    private sealed class LinkReader(EventLoop loop, IPollableLink link) : IPollHandler
    {
        public ulong Token;
        public int Fd;
        private readonly int _linkId = loop._switch.IdOf(link);

        public void OnReady(uint events, long now)
        {
            byte[] buffer = loop._frame;
            for (int i = 0; i < MaxFramesPerTurn; i++)
            {
                int n = link.TryReceive(buffer);
                if (n < 0)
                {
                    return;
                }
                if (n == 0)
                {
                    // Level-triggered: a dead descriptor stays ready, so it leaves the set before anything else.
                    loop._epoll.Remove(Fd);
                    loop.Unregister(Token);
                    loop._linkClosed(link);
                    return;
                }
                ReadOnlySpan<byte> frame = buffer.AsSpan(0, n);
                if (loop._switch.FromLink(link, frame, loop._gatewayMac))
                {
                    loop._gate.Engine.Receive(frame, now, link.LastFrameTrusted, _linkId);
                }
                // A small frame (a request, an ACK) is most likely alone: back to epoll rather than a read that would
                // only say EAGAIN. Bulk data comes in runs: read on, and the flows' sockets get one larger send(2)
                // per run (the loop moves their bytes after all events are in).
                if (n < BulkFrame)
                {
                    return;
                }
            }
        }
    }
}
