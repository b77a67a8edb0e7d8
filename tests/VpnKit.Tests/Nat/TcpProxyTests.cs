using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.VpnKit.Links;
using Kit.VpnKit.Tests.Stack;
using Kit.VpnKit.Wire;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Nat;

/// <summary>
/// Guest TCP connections carried to real loopback sockets by a running server: a hand-built guest on an in-memory
/// link (read on its own thread, so every frame's socket work runs on that thread) and real host listeners.
/// </summary>
public sealed class TcpProxyTests : IDisposable
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    private readonly VpnKitServer _server = new(new VpnKitServerOptions { DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)] }, NullLoggerFactory.Instance);
    private readonly MemoryLink _link = new();
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);

    public TcpProxyTests()
    {
        _server.Start();
        _server.AddLink(_link);
        _listener.Start();
    }

    private ushort Port => (ushort)((IPEndPoint)_listener.LocalEndpoint).Port;

    public void Dispose()
    {
        _listener.Stop();
        _server.Dispose();
    }

    [Fact]
    public void RequestAndResponseFlowBothWaysThenEachSideHalfCloses()
    {
        var g = new GuestConnection(_link, 40001, Port);
        g.Open();
        using Socket host = _listener.AcceptSocket();
        host.ReceiveTimeout = 10_000;

        g.Send("ping");
        Assert.Equal("ping", ReadExactly(host, 4));
        host.Send("pong"u8);
        Assert.Equal("pong", g.ReadString(4));

        // Guest FIN: the host reads EOF, yet may still answer (half-close), then closes: the guest gets its FIN.
        g.Finish();
        Assert.Equal(0, host.Receive(new byte[16]));
        host.Send("bye"u8);
        Assert.Equal("bye", g.ReadString(3));
        host.Shutdown(SocketShutdown.Send);
        g.WaitForFin();
    }

    [Fact]
    public void AServerThatSpeaksBeforeTheHandshakeEndsLosesNothing()
    {
        var g = new GuestConnection(_link, 40002, Port);
        g.SendSyn();
        g.WaitForSynAck();
        using Socket host = _listener.AcceptSocket();
        // The banner reaches the gateway while the connection is still SYN-RECEIVED (the guest has not ACKed).
        host.Send("220 banner\r\n"u8);
        Thread.Sleep(300);
        g.AckSynAck();
        Assert.Equal("220 banner\r\n", g.ReadString(12));
    }

    [Fact]
    public void AMegabyteEachWayArrivesWholeThroughTheBoundedBuffers()
    {
        var g = new GuestConnection(_link, 40003, Port);
        g.Open();
        using Socket host = _listener.AcceptSocket();
        host.ReceiveTimeout = 10_000;
        byte[] data = new byte[1 << 20];
        new Random(7).NextBytes(data);

        // Host → guest: more than the 512 KiB send buffer, so the proxy stops reading when it is full and resumes
        // when the guest's ACKs drain it.
        var sender = new Thread(() => host.Send(data));
        sender.Start();
        byte[] got = g.Read(data.Length);
        Assert.True(sender.Join(Wait));
        Assert.Equal(data, got);

        // Guest → host: the guest sends within the advertised window; the host reads it all.
        byte[]? read = null;
        var reader = new Thread(() => read = ReadBytes(host, data.Length));
        reader.Start();
        g.SendBulk(data);
        Assert.True(reader.Join(Wait));
        Assert.Equal(data, read);
    }

    /// <summary>
    /// A host that writes and closes at once (an HTTP/1.0 server, `socat -u`) often has both queued before the gateway
    /// wakes, so one edge-triggered event says both (EPOLLIN|EPOLLRDHUP). The short read that drains the data must not
    /// end the turn: the close has no edge of its own left to come, and the guest would wait forever for its FIN.
    /// </summary>
    [Fact]
    public void DataAndACloseThatArriveTogetherBothReachTheGuest()
    {
        for (int i = 0; i < 5; i++)
        {
            var g = new GuestConnection(_link, (ushort)(40100 + i), Port);
            g.Open();
            using Socket host = _listener.AcceptSocket();
            byte[] data = Encoding.ASCII.GetBytes(new string((char)('a' + i), 3000));

            host.Send(data);
            host.Shutdown(SocketShutdown.Send);

            Assert.Equal(data, g.Read(data.Length));
            g.WaitForFin();
        }
    }

    [Fact]
    public void AConnectToAClosedPortResetsTheGuest()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        ushort closed = (ushort)((IPEndPoint)probe.LocalEndpoint).Port;
        probe.Stop();
        var g = new GuestConnection(_link, 40004, closed);
        g.SendSyn();
        Seg rst = g.Next(s => (s.Flags & TcpFlags.Rst) != 0);
        Assert.Equal(TcpFlags.Rst | TcpFlags.Ack, rst.Flags & (TcpFlags.Rst | TcpFlags.Ack));
        Assert.Equal(g.Iss + 1, rst.Ack);
    }

    [Fact]
    public void AHostResetBecomesAGuestReset()
    {
        var g = new GuestConnection(_link, 40005, Port);
        g.Open();
        Socket host = _listener.AcceptSocket();
        host.LingerState = new LingerOption(true, 0);
        host.Dispose(); // RST
        g.Next(s => (s.Flags & TcpFlags.Rst) != 0);
    }

    private static string ReadExactly(Socket s, int n) => Encoding.ASCII.GetString(ReadBytes(s, n));

    private static byte[] ReadBytes(Socket s, int n)
    {
        byte[] b = new byte[n];
        int got = 0;
        while (got < n)
        {
            int r = s.Receive(b, got, n - got, SocketFlags.None);
            Assert.True(r > 0, "host socket closed early");
            got += r;
        }
        return b;
    }

    /// <summary>One guest connection to the host alias, with just enough TCP to drive the gateway.</summary>
    private sealed class GuestConnection(MemoryLink link, ushort port, ushort hostPort)
    {
        private const int Mss = 1460;
        private uint _sndNxt = 1000;
        private uint _rcvNxt;
        private uint _peerWindowEdge;
        private readonly List<byte> _received = [];

        public uint Iss => 1000;

        public void SendSyn() => link.Inject(G.Tcp(G.Host, port, hostPort, Iss, 0, TcpFlags.Syn, options: new TcpOptions { Mss = Mss, WindowScale = -1 }));

        public void WaitForSynAck()
        {
            Seg synAck = Next(s => (s.Flags & (TcpFlags.Syn | TcpFlags.Ack)) == (TcpFlags.Syn | TcpFlags.Ack));
            Assert.Equal(Iss + 1, synAck.Ack);
            _rcvNxt = synAck.Seq + 1;
            _sndNxt = Iss + 1;
            _peerWindowEdge = _sndNxt + synAck.Window;
        }

        public void AckSynAck() => link.Inject(G.Tcp(G.Host, port, hostPort, _sndNxt, _rcvNxt, TcpFlags.Ack));

        public void Open()
        {
            SendSyn();
            WaitForSynAck();
            AckSynAck();
        }

        public void Send(string text) => SendBulk(Encoding.ASCII.GetBytes(text));

        /// <summary>Sends in MSS segments, never past the gateway's advertised window (waits for its ACKs).</summary>
        public void SendBulk(byte[] data)
        {
            int at = 0;
            DateTime deadline = DateTime.UtcNow + Wait;
            while (at < data.Length)
            {
                int room = (int)(_peerWindowEdge - _sndNxt);
                if (room <= 0)
                {
                    Assert.True(DateTime.UtcNow < deadline, "the gateway's window never reopened");
                    Next(_ => true, TimeSpan.FromMilliseconds(500), allowNone: true);
                    continue;
                }
                int n = Math.Min(Math.Min(Mss, room), data.Length - at);
                link.Inject(G.Tcp(G.Host, port, hostPort, _sndNxt, _rcvNxt, TcpFlags.Ack | TcpFlags.Psh, payload: data.AsSpan(at, n).ToArray()));
                _sndNxt += (uint)n;
                at += n;
                Drain();
            }
        }

        public void Finish()
        {
            link.Inject(G.Tcp(G.Host, port, hostPort, _sndNxt, _rcvNxt, TcpFlags.Fin | TcpFlags.Ack));
            _sndNxt++;
        }

        public byte[] Read(int n)
        {
            DateTime deadline = DateTime.UtcNow + Wait;
            while (_received.Count < n)
            {
                Assert.True(DateTime.UtcNow < deadline, $"got {_received.Count} of {n} bytes");
                Next(s => s.Payload.Length > 0, TimeSpan.FromSeconds(1), allowNone: true);
            }
            byte[] b = [.. _received.GetRange(0, n)];
            _received.RemoveRange(0, n);
            return b;
        }

        public string ReadString(int n) => Encoding.ASCII.GetString(Read(n));

        /// <summary>The gateway's FIN came, with data or alone (it may have been absorbed by an earlier read).</summary>
        public bool FinReceived { get; private set; }

        public void WaitForFin()
        {
            if (!FinReceived)
            {
                Next(s => (s.Flags & TcpFlags.Fin) != 0);
            }
        }

        private void Drain()
        {
            while (link.FromGateway.TryTake(out byte[]? f))
            {
                Absorb(f);
            }
        }

        /// <summary>Takes segments (absorbing data and ACKs as a receiver would) until one matches.</summary>
        public Seg Next(Func<Seg, bool> match, TimeSpan? within = null, bool allowNone = false)
        {
            DateTime deadline = DateTime.UtcNow + (within ?? Wait);
            while (true)
            {
                TimeSpan left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero || !link.FromGateway.TryTake(out byte[]? f, left))
                {
                    Assert.True(allowNone, "no matching segment from the gateway");
                    return null!;
                }
                Seg? s = Absorb(f);
                if (s is not null && match(s))
                {
                    return s;
                }
            }
        }

        private Seg? Absorb(byte[] frame)
        {
            Seg? s = G.DecodeTcp(frame);
            if (s is null || s.DstPort != port)
            {
                return null;
            }
            if ((s.Flags & TcpFlags.Ack) != 0)
            {
                _peerWindowEdge = s.Ack + s.Window;
            }
            bool ack = false;
            if (s.Payload.Length > 0 && s.Seq == _rcvNxt)
            {
                _received.AddRange(s.Payload);
                _rcvNxt += (uint)s.Payload.Length;
                ack = true;
            }
            if ((s.Flags & TcpFlags.Fin) != 0 && s.Seq + (uint)s.Payload.Length == _rcvNxt)
            {
                FinReceived = true;
                _rcvNxt++;
                ack = true;
            }
            if (ack)
            {
                link.Inject(G.Tcp(G.Host, port, hostPort, _sndNxt, _rcvNxt, TcpFlags.Ack));
            }
            return s;
        }
    }
}
