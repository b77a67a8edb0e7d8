using System.Net;
using System.Net.Sockets;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// IPv4 reassembly with the namespace's kernel as the fragmenter: a 4,000-byte UDP datagram to the host alias leaves
/// the namespace as three fragments (MTU 1500) and must reach a socket on the host's 127.0.0.1 whole and intact.
/// </summary>
[Trait("Tier", "Real")]
public sealed class FragmentTests
{
    public FragmentTests() => NetRun.RequirePrerequisites();

    [Fact]
    public async Task ALargeUdpDatagramIsFragmentedByTheGuestAndArrivesWhole()
    {
        using var receiver = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        receiver.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        int port = ((IPEndPoint)receiver.LocalEndPoint!).Port;
        // bytes(i % 251) makes a reordering or a lost block visible; IP_PMTUDISC_DONT lets the kernel fragment. UDP
        // is unreliable: on a loaded machine the first datagram can be lost before the namespace's neighbour entry for
        // the gateway settles, so the sender repeats it (bounded: 10 times, 0.5 s apart). Every copy that arrives
        // must be whole; the first is checked.
        string script = $"python3 -c \"import socket, time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " +
            $"s.setsockopt(socket.IPPROTO_IP, 10, 0); " +
            $"[(s.sendto(bytes(i % 251 for i in range(4000)), ('192.168.65.2', {port})), time.sleep(0.5)) for _ in range(10)]\"";
        Task<ProcessResult> run = NetRun.RunAsync([], script, TimeSpan.FromSeconds(60));
        byte[] buffer = new byte[65536];
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(45));
        int n = await receiver.ReceiveAsync(buffer, SocketFlags.None, cts.Token);
        ProcessResult r = await run;
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Equal(4000, n);
        for (int i = 0; i < n; i++)
        {
            Assert.True(buffer[i] == (byte)(i % 251), $"byte {i} is {buffer[i]}");
        }
    }
}
