using System.Net;
using System.Net.Sockets;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// Reassembly with the namespace's kernel as the fragmenter: a 4,000-byte UDP datagram to the host alias leaves the
/// namespace as fragments (MTU 1500) and must reach a socket on the host's loopback whole and intact: over IPv4
/// (RFC 791 §3.2) to 127.0.0.1, and over IPv6 (RFC 8200 §4.5) through fd00:6b69:7400::2 to [::1].
/// </summary>
[Trait("Tier", "Real")]
public sealed class FragmentTests
{
    public FragmentTests() => NetRun.RequirePrerequisites();

    [Fact]
    public Task ALargeUdpDatagramIsFragmentedByTheGuestAndArrivesWhole() =>
        SendAndReceive(AddressFamily.InterNetwork, IPAddress.Loopback, "192.168.65.2",
            // IP_MTU_DISCOVER = IP_PMTUDISC_DONT lets the kernel fragment.
            "socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, 10, 0", waitForAddress: "");

    [Fact]
    public Task ALargeIpv6DatagramIsFragmentedByTheGuestAndArrivesWhole() =>
        SendAndReceive(AddressFamily.InterNetworkV6, IPAddress.IPv6Loopback, "fd00:6b69:7400::2", "socket.AF_INET6, socket.SOCK_DGRAM",
            // SLAAC first (bounded, 10 s), so the datagram leaves from a global address.
            waitForAddress: NetRun.WaitForSlaac());

    /// <summary>
    /// bytes(i % 251) makes a reordering or a lost block visible. UDP is unreliable: on a loaded machine the first
    /// datagram can be lost before the namespace's neighbour entry for the gateway settles, so the sender repeats it
    /// (bounded: 10 times, 0.5 s apart). Every copy that arrives must be whole; the first is checked.
    /// </summary>
    private static async Task SendAndReceive(AddressFamily family, IPAddress bind, string target, string socketArgs, string waitForAddress)
    {
        using var receiver = new Socket(family, SocketType.Dgram, ProtocolType.Udp);
        receiver.Bind(new IPEndPoint(bind, 0));
        int port = ((IPEndPoint)receiver.LocalEndPoint!).Port;
        string script = waitForAddress + "python3 -c \"import socket, time; s=socket.socket(" + socketArgs + "); "
            + $"[(s.sendto(bytes(i % 251 for i in range(4000)), ('{target}', {port})), time.sleep(0.5)) for _ in range(10)]\"";
        Task<ProcessResult> run = NetRun.RunAsync([], script, TimeSpan.FromSeconds(60));
        byte[] buffer = new byte[65536];
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(45));
        Task<int> received = receiver.ReceiveAsync(buffer, SocketFlags.None, cts.Token).AsTask();
        await Task.WhenAny(received); // bounded by cts: a failure below says why, with the guest's output
        ProcessResult r = await run;
        Assert.True(r.ExitCode == 0 && received.IsCompletedSuccessfully, $"received: {received.Status}\n{NetRun.Describe(r)}");
        int n = received.Result;
        Assert.Equal(4000, n);
        for (int i = 0; i < n; i++)
        {
            Assert.True(buffer[i] == (byte)(i % 251), $"byte {i} is {buffer[i]}");
        }
    }
}
