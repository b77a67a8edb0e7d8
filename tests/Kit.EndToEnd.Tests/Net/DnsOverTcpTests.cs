using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// DNS over TCP to the gateway (RFC 7766) from a real client in the namespace: a Python resolver stub speaking
/// length-prefixed DNS on one connection. Built-in names are answered by the gateway; other names go to a TCP DNS
/// server this test runs on 127.0.0.1.
/// </summary>
[Trait("Tier", "Real")]
public sealed class DnsOverTcpTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    public DnsOverTcpTests() => NetRun.RequirePrerequisites();

    // Two queries on one connection, then a third on a new one, to the gateway address argv[2]; prints "NAME RCODE ADDR" per answer.
    private const string Client = """
        import socket, struct, sys
        def query(s, qid, name):
            q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
            q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
            s.sendall(struct.pack(">H", len(q)) + q)
            def read(n):
                b = b""
                while len(b) < n:
                    c = s.recv(n - len(b))
                    if not c:
                        raise SystemExit("connection closed")
                    b += c
                return b
            r = read(struct.unpack(">H", read(2))[0])
            rid, flags, qd, an = struct.unpack(">HHHH", r[:8])
            assert rid == qid and flags & 0x8000, (rid, flags)
            addr = socket.inet_ntoa(r[-4:]) if an else "-"
            print(name, flags & 0xF, addr)
        s = socket.create_connection((sys.argv[2], 53), timeout=10)
        query(s, 0x1111, "host.docker.internal")
        query(s, 0x2222, sys.argv[1])
        s.close()
        s = socket.create_connection((sys.argv[2], 53), timeout=10)
        query(s, 0x3333, "host.internal")
        """;

    /// <summary>
    /// Over IPv4 to 192.168.65.1:53, and over IPv6 to the gateway's address in the prefix (the RA's RDNSS) and to its
    /// link-local address: the same forwarder answers, and the same upstream on 127.0.0.1 gets the other name.
    /// </summary>
    [Theory]
    [InlineData("192.168.65.1")]
    [InlineData("fd00:6b69:7400::1")]
    [InlineData("fe80::f416:36ff:febc:f9c6%eth0")]
    public async Task BuiltInNamesAreAnsweredAndOthersGoUpstreamOverTcp(string gateway)
    {
        using var upstream = new TcpDnsUpstream();
        string file = Path.Combine(Path.GetTempPath(), $"kit-dnstcp-{Guid.NewGuid():N}.py");
        await File.WriteAllTextAsync(file, Client, TestContext.Current.CancellationToken);
        try
        {
            ProcessResult r = await NetRun.RunAsync(["--dns-upstream", $"127.0.0.1:{upstream.Port}"],
                (gateway.Contains(':', StringComparison.Ordinal) ? NetRun.WaitForSlaac() : "") + $"python3 {file} {TcpDnsUpstream.Name} {gateway}", Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            Assert.Contains("host.docker.internal 0 192.168.65.2", r.StandardOutput);
            Assert.Contains($"{TcpDnsUpstream.Name} 0 {TcpDnsUpstream.Address}", r.StandardOutput);
            Assert.Contains("host.internal 0 192.168.65.2", r.StandardOutput);
            // Only the non-built-in name reached the upstream, and over TCP.
            Assert.Equal([TcpDnsUpstream.Name], upstream.Queries);
        }
        finally
        {
            File.Delete(file);
        }
    }

    /// <summary>A DNS server over TCP on 127.0.0.1 that answers every A query with one address and records the names.</summary>
    private sealed class TcpDnsUpstream : IDisposable
    {
        public const string Name = "tcp-only.example";
        public static readonly IPAddress Address = IPAddress.Parse("10.20.30.40");
        private readonly ConcurrentQueue<string> _queries = new();
        private readonly LoopbackTcpServer _server;

        public TcpDnsUpstream() => _server = new LoopbackTcpServer(AnswerAsync);

        public int Port => _server.Port;
        public string[] Queries => [.. _queries];

        /// <summary>One query per connection (RFC 7766 framing: a two-byte length before the message).</summary>
        private async Task AnswerAsync(TcpClient c, CancellationToken cancel)
        {
            NetworkStream s = c.GetStream();
            byte[] len = new byte[2];
            await s.ReadExactlyAsync(len, cancel);
            byte[] q = new byte[BinaryPrimitives.ReadUInt16BigEndian(len)];
            await s.ReadExactlyAsync(q, cancel);
            // Question name from offset 12 (labels), then type and class: echo it with one A record.
            int at = 12;
            var labels = new List<string>();
            while (q[at] != 0)
            {
                labels.Add(System.Text.Encoding.ASCII.GetString(q, at + 1, q[at]));
                at += 1 + q[at];
            }
            _queries.Enqueue(string.Join('.', labels));
            int qEnd = at + 5;
            byte[] r = new byte[2 + qEnd + 16];
            BinaryPrimitives.WriteUInt16BigEndian(r, (ushort)(qEnd + 16));
            q.AsSpan(0, qEnd).CopyTo(r.AsSpan(2));
            r[4] = 0x81;
            r[5] = 0x80;
            r[9] = 1; // ANCOUNT = 1
            byte[] answer = [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, .. Address.GetAddressBytes()];
            answer.CopyTo(r, 2 + qEnd);
            await s.WriteAsync(r, cancel);
        }

        public void Dispose() => _server.Dispose();
    }
}
