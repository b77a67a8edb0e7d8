using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;

namespace Kit.Testing;

/// <summary>
/// The DNS upstream the tests give `kit net serve --dns-upstream`: UDP on 127.0.0.1, one fixed A record
/// (<see cref="Name"/> → <see cref="Address"/>), an empty NOERROR for the name's other types, NXDOMAIN for any
/// other name (RFC 1035 §4.1). It records the names it was asked, so a test proves the forwarder used it.
/// </summary>
public sealed class TinyDnsServer : IDisposable
{
    public const string Name = "kit-test.example";
    public static readonly IPAddress Address = IPAddress.Parse("10.11.12.13");

    private readonly Socket _socket;
    private readonly CancellationTokenSource _stop = new();
    private readonly ConcurrentQueue<string> _queries = new();
    private readonly IPAddress _answer;
    private readonly IPAddress? _answer6;

    public TinyDnsServer()
        : this(new IPEndPoint(IPAddress.Loopback, 0), Address)
    {
    }

    /// <summary>
    /// A server at <paramref name="bind"/> (e.g. 127.0.0.2:53, as a resolv.conf names it, or [::1]:0) answering
    /// <see cref="Name"/> with <paramref name="answer"/> (A) and <paramref name="answer6"/> (AAAA, when given).
    /// </summary>
    public TinyDnsServer(IPEndPoint bind, IPAddress answer, IPAddress? answer6 = null)
    {
        _answer = answer;
        _answer6 = answer6;
        _socket = new Socket(bind.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        _socket.Bind(bind);
        _ = ServeAsync();
    }

    public IPEndPoint EndPoint => (IPEndPoint)_socket.LocalEndPoint!;

    /// <summary>"name/type" of every query received, e.g. "kit-test.example/1".</summary>
    public IReadOnlyCollection<string> Queries => _queries;

    private async Task ServeAsync()
    {
        byte[] buffer = new byte[1500];
        EndPoint any = new IPEndPoint(_socket.AddressFamily == AddressFamily.InterNetwork ? IPAddress.Any : IPAddress.IPv6Any, 0);
        try
        {
            while (true)
            {
                SocketReceiveFromResult r = await _socket.ReceiveFromAsync(buffer, SocketFlags.None, any, _stop.Token);
                byte[]? reply = Answer(buffer.AsSpan(0, r.ReceivedBytes));
                if (reply is not null)
                {
                    await _socket.SendToAsync(reply, SocketFlags.None, r.RemoteEndPoint, _stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    private byte[]? Answer(ReadOnlySpan<byte> q)
    {
        // Header (12 bytes), then exactly one question: labels, type, class.
        if (q.Length < 12 || BinaryPrimitives.ReadUInt16BigEndian(q[4..]) != 1)
        {
            return null;
        }
        var name = new StringBuilder();
        int at = 12;
        while (at < q.Length && q[at] != 0)
        {
            int len = q[at];
            if (len > 63 || at + 1 + len > q.Length)
            {
                return null;
            }
            if (name.Length > 0)
            {
                name.Append('.');
            }
            name.Append(Encoding.ASCII.GetString(q.Slice(at + 1, len)));
            at += 1 + len;
        }
        int questionEnd = at + 5;
        if (questionEnd > q.Length)
        {
            return null;
        }
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(q[(at + 1)..]);
        string qname = name.ToString();
        _queries.Enqueue($"{qname.ToLowerInvariant()}/{type}");

        bool known = string.Equals(qname, Name, StringComparison.OrdinalIgnoreCase);
        IPAddress? address = !known ? null : type == 1 ? _answer : type == 28 ? _answer6 : null;
        bool answer = address is not null;
        byte[] rdata = address?.GetAddressBytes() ?? [];
        byte[] reply = new byte[questionEnd + (answer ? 12 + rdata.Length : 0)];
        q[..questionEnd].CopyTo(reply);
        ushort rd = (ushort)(BinaryPrimitives.ReadUInt16BigEndian(q[2..]) & 0x0100);
        // QR=1, RA=1, RD copied; RCODE 3 = NXDOMAIN.
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(2), (ushort)(0x8080 | rd | (known ? 0 : 3)));
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(6), (ushort)(answer ? 1 : 0));
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), 0);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(10), 0);
        if (answer)
        {
            Span<byte> rr = reply.AsSpan(questionEnd);
            BinaryPrimitives.WriteUInt16BigEndian(rr, 0xC00C); // pointer to the question name
            BinaryPrimitives.WriteUInt16BigEndian(rr[2..], type); // A or AAAA
            BinaryPrimitives.WriteUInt16BigEndian(rr[4..], 1);  // IN
            BinaryPrimitives.WriteUInt32BigEndian(rr[6..], 60); // TTL
            BinaryPrimitives.WriteUInt16BigEndian(rr[10..], (ushort)rdata.Length);
            rdata.CopyTo(rr[12..]);
        }
        return reply;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _socket.Dispose();
        _stop.Dispose();
    }
}

/// <summary>
/// A TCP server on a loopback address for tests: it accepts until disposed and runs the handler on each connection,
/// which is closed when the handler returns. Cancellation and the I/O errors of a peer that went away end a handler
/// quietly; any other exception ends that connection only, and the test sees what its client received.
/// </summary>
public sealed class LoopbackTcpServer : IDisposable
{
    private readonly TcpListener _listener;
    private readonly CancellationTokenSource _stop = new();
    private readonly Func<TcpClient, CancellationToken, Task> _handler;

    /// <param name="handler">Serves one connection; the token fires when the server is disposed.</param>
    /// <param name="address">The loopback address to bind (127.0.0.1 unless given, e.g. ::1).</param>
    /// <param name="port">The port (default: one the kernel picks).</param>
    public LoopbackTcpServer(Func<TcpClient, CancellationToken, Task> handler, IPAddress? address = null, int port = 0)
    {
        address ??= IPAddress.Loopback;
        if (!IPAddress.IsLoopback(address))
        {
            throw new ArgumentException($"{address} is not a loopback address: tests listen on loopback only", nameof(address));
        }
        _handler = handler;
        _listener = new TcpListener(address, port);
        _listener.Start();
        _ = AcceptAsync();
    }

    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;

    public int Port => EndPoint.Port;

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                TcpClient client = await _listener.AcceptTcpClientAsync(_stop.Token);
                _ = ServeAsync(client);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    private async Task ServeAsync(TcpClient client)
    {
        using (client)
        {
            try
            {
                await _handler(client, _stop.Token);
            }
            catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException or SocketException)
            {
            }
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
        _stop.Dispose();
    }
}

/// <summary>
/// A one-page HTTP/1.0 server on 127.0.0.1 (what the guest reaches as 192.168.65.2). The page is large enough to
/// take many TCP segments and its MD5 is known, so the guest's checksum proves every byte crossed the gateway.
/// </summary>
public sealed class TinyHttpServer : IDisposable
{
    public const string Path = "/kit-page";

    private readonly LoopbackTcpServer _server;
    private readonly ConcurrentQueue<string> _requests = new();

    /// <param name="bind">The loopback address to listen on (default 127.0.0.1; [::1] for IPv6).</param>
    /// <param name="port">The port (default: one the kernel picks).</param>
    public TinyHttpServer(int size = 256 * 1024, IPAddress? bind = null, int port = 0)
    {
        Body = new byte[size];
        // Printable, position-dependent content: a lost or reordered segment changes the digest.
        for (int i = 0; i < size; i++)
        {
            Body[i] = (byte)('a' + ((i * 7 + i / 251) % 26));
        }
        Md5 = Convert.ToHexStringLower(MD5.HashData(Body));
        _server = new LoopbackTcpServer(HandleAsync, bind, port);
    }

    public byte[] Body { get; }

    public string Md5 { get; }

    public int Port => _server.Port;

    /// <summary>The request line of every request served.</summary>
    public IReadOnlyCollection<string> Requests => _requests;

    private async Task HandleAsync(TcpClient client, CancellationToken cancel)
    {
        NetworkStream s = client.GetStream();
        byte[] head = new byte[8192];
        int n = 0;
        while (n < head.Length)
        {
            int r = await s.ReadAsync(head.AsMemory(n), cancel);
            if (r == 0)
            {
                return;
            }
            n += r;
            if (head.AsSpan(0, n).IndexOf("\r\n\r\n"u8) >= 0)
            {
                break;
            }
        }
        string request = Encoding.ASCII.GetString(head, 0, n);
        _requests.Enqueue(request.Split("\r\n")[0]);
        byte[] header = Encoding.ASCII.GetBytes(
            $"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {Body.Length}\r\nConnection: close\r\n\r\n");
        await s.WriteAsync(header, cancel);
        await s.WriteAsync(Body, cancel);
        client.Client.Shutdown(SocketShutdown.Send);
        // Let the guest read everything and close first.
        while (await s.ReadAsync(head, cancel) > 0)
        {
        }
    }

    public void Dispose() => _server.Dispose();
}

/// <summary>Loopback ports for tests.</summary>
public static class LoopbackPort
{
    // Ports are drawn below the kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768-60999 by default): a port
    // from that range can be taken between this check and the test's own bind by the local end of any outgoing
    // connection a parallel test makes, and bind(2) then fails with EADDRINUSE (CI saw it once, in PortForwardsTests).
    // The span starts above 26000 to stay clear of the fixed ports tests use (18080-18081, 15201, 15353, 20000-20255).
    private const int First = 26000;
    private static int s_next = First + Random.Shared.Next(4096);

    /// <summary>A TCP port on 127.0.0.1 that was free a moment ago, outside the ephemeral range (racy only against
    /// other binders of that port).</summary>
    public static int Free()
    {
        int end = EphemeralStart();
        for (int tries = 0; tries < 512 && end - First >= 1024; tries++)
        {
            int port = First + ((Interlocked.Increment(ref s_next) - First) % (end - First));
            try
            {
                using var listener = new TcpListener(IPAddress.Loopback, port);
                listener.Start();
                return port;
            }
            catch (SocketException)
            {
                // taken: try the next one
            }
        }
        using var any = new TcpListener(IPAddress.Loopback, 0);
        any.Start();
        return ((IPEndPoint)any.LocalEndpoint).Port;
    }

    private static int EphemeralStart()
    {
        try
        {
            return int.Parse(File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range").Split((char[])['\t', ' '], StringSplitOptions.RemoveEmptyEntries)[0]);
        }
        catch (Exception e) when (e is IOException or FormatException or UnauthorizedAccessException)
        {
            return 32768;
        }
    }
}
