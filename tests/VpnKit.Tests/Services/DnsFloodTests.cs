using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Kit.VpnKit.Services;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.VpnKit.Tests.Services;

/// <summary>The flood test counts the process's descriptors: it runs while no other test does.</summary>
[CollectionDefinition(nameof(DnsFloodTests), DisableParallelization = true)]
public sealed class DnsFloodCollection;

/// <summary>
/// Security review finding 7: a flood of queries at a silent upstream (a loopback socket that never answers) used to
/// hold a socket and a 64 KiB buffer per query for 4 s: 5,084 descriptors and 360 MB after 2.5 s. Queries in flight are
/// now bounded, and those beyond the bound get SERVFAIL (RCODE 2) at once.
/// </summary>
[Collection(nameof(DnsFloodTests))]
public sealed class DnsFloodTests : IDisposable
{
    private readonly Socket _silent = new(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);

    public DnsFloodTests() => _silent.Bind(new IPEndPoint(IPAddress.Loopback, 0)); // bound, so no ICMP unreachable: silence

    public void Dispose() => _silent.Dispose();

    private DnsForwarder Forwarder() =>
        new([(IPEndPoint)_silent.LocalEndPoint!], null, new LocalNames(IPAddress.Parse("192.168.65.2"), [], [], null, hostLoopback: true), NullLogger.Instance);

    private static byte[] Query(int i)
    {
        // Header (id, RD), one question: q<i>.example. A IN.
        string label = $"q{i}";
        byte[] q = new byte[12 + 1 + label.Length + 9 + 4];
        BinaryPrimitives.WriteUInt16BigEndian(q, (ushort)i);
        q[2] = 0x01;
        q[5] = 1;
        int o = 12;
        q[o++] = (byte)label.Length;
        foreach (char c in label)
        {
            q[o++] = (byte)c;
        }
        q[o++] = 7;
        foreach (char c in "example")
        {
            q[o++] = (byte)c;
        }
        q[o++] = 0;
        q[o + 1] = 1;
        q[o + 3] = 1;
        return q;
    }

    private static int Descriptors() => Directory.GetFiles("/proc/self/fd").Length;

    [Fact]
    public async Task AFloodAtASilentUpstreamIsBoundedAndTheExcessGetsServfailAtOnce()
    {
        DnsForwarder dns = Forwarder();
        int before = Descriptors();
        const int Flood = 4000;
        var answers = new Task<byte[]?>[Flood];
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < Flood; i++)
        {
            answers[i] = dns.ResolveAsync(Query(i), cancel: TestContext.Current.CancellationToken);
        }
        // Every query is either waiting on the upstream (one socket each) or already answered.
        await Task.Delay(300, TestContext.Current.CancellationToken);
        int grown = Descriptors() - before;
        Assert.True(grown <= 1024 + 100, $"{grown} descriptors opened by {Flood} queries in flight");
        int servfail = 0;
        for (int i = 0; i < Flood; i++)
        {
            if (answers[i].IsCompleted && await answers[i] is { } r)
            {
                Assert.Equal((ushort)i, BinaryPrimitives.ReadUInt16BigEndian(r)); // the query's id
                Assert.Equal(0x80, r[2] & 0x80); // a response
                Assert.Equal(2, r[3] & 0x0F); // RCODE 2, SERVFAIL
                servfail++;
            }
        }
        Assert.True(servfail >= Flood - 1024, $"only {servfail} of {Flood} answered SERVFAIL within {clock.ElapsedMilliseconds} ms");
        // The ones that did go upstream give up (null: the client retries) after their attempts, and free their slots.
        await Task.WhenAll(answers).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Equal(0, dns.InFlight);
        Assert.True(Descriptors() - before <= 50, "upstream sockets were not closed");
    }

    [Fact]
    public async Task OneGuestsFloodLeavesRoomForAnother()
    {
        DnsForwarder dns = Forwarder();
        const uint A = 0xC0A84103, B = 0xC0A84104;
        var flood = new Task<byte[]?>[600];
        for (int i = 0; i < flood.Length; i++)
        {
            flood[i] = dns.ResolveAsync(Query(i), cancel: TestContext.Current.CancellationToken, client: A);
        }
        int refused = flood.Count(t => t.IsCompleted);
        Assert.Equal(flood.Length - DnsForwarder.MaxInFlightPerClient, refused);
        // B's query goes upstream (pending on the silent upstream), not SERVFAIL.
        Task<byte[]?> other = dns.ResolveAsync(Query(9999), cancel: TestContext.Current.CancellationToken, client: B);
        Assert.False(other.IsCompleted);
        Assert.Equal(DnsForwarder.MaxInFlightPerClient + 1, dns.InFlight);
        await Task.WhenAll([.. flood, other]).WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.Null(await other); // a silent upstream: no answer, the client retries
    }
}
