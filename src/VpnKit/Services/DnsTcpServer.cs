using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Kit.VpnKit.Services;

/// <summary>
/// DNS over TCP for the gateway's port 53 (RFC 7766): the NAT carries a guest's TCP connection to 192.168.65.1:53 to
/// this listener on the host's 127.0.0.1, so the engine and its TCP proxy stay unchanged, and every message is
/// answered by the same <see cref="DnsForwarder"/> as over UDP (built-in names included; others go upstream over
/// TCP). Messages on one connection are answered in order (RFC 7766 §6.2.1 allows it). Bounded: 256 connections,
/// closed after 30 s without a query.
/// </summary>
internal sealed partial class DnsTcpServer : IDisposable
{
    private const int MaxSessions = 256;
    private static readonly TimeSpan IdleTimeout = TimeSpan.FromSeconds(30);

    private readonly LoopbackAcceptor _acceptor;
    private readonly DnsForwarder _dns;
    private readonly ILogger _log;
    private readonly CancellationTokenSource _stop = new();

    public DnsTcpServer(DnsForwarder dns, ILogger log)
    {
        _dns = dns;
        _log = log;
        _acceptor = new LoopbackAcceptor(backlog: 64, MaxSessions, ServeAsync, _stop.Token);
    }

    /// <summary>Where the NAT sends guest connections to the gateway's TCP port 53.</summary>
    public IPEndPoint EndPoint => _acceptor.EndPoint;

    private async Task ServeAsync(Socket s)
    {
        try
        {
            s.NoDelay = true;
            byte[] length = new byte[2];
            while (true)
            {
                byte[] query;
                using (var idle = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token))
                {
                    idle.CancelAfter(IdleTimeout);
                    if (!await DnsForwarder.ReadExactlyAsync(s, length, idle.Token).ConfigureAwait(false))
                    {
                        return;
                    }
                    query = new byte[BinaryPrimitives.ReadUInt16BigEndian(length)];
                    if (!await DnsForwarder.ReadExactlyAsync(s, query, idle.Token).ConfigureAwait(false))
                    {
                        return;
                    }
                }
                byte[]? answer = await _dns.ResolveAsync(query, overTcp: true, _stop.Token).ConfigureAwait(false)
                    ?? DnsForwarder.ServerFailure(query);
                if (answer is null)
                {
                    LogMalformed(_log);
                    return; // Not a DNS query: a peer that breaks the protocol loses its connection.
                }
                byte[] framed = new byte[2 + answer.Length];
                BinaryPrimitives.WriteUInt16BigEndian(framed, (ushort)answer.Length);
                answer.CopyTo(framed, 2);
                await s.SendAsync(framed, SocketFlags.None, _stop.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or OperationCanceledException)
        {
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _acceptor.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "DNS over TCP: a message that is not a query; connection closed")]
    private static partial void LogMalformed(ILogger log);
}
