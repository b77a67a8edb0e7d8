using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// What the host's refusal of a datagram looks like to a guest, and the host alias's IPv6 address for datagrams and
/// echoes (docs/vpnkit.md, "NAT"), with the namespace's own kernel and Python as the client: a connected UDP socket
/// fails at once with ECONNREFUSED when nothing listens (both families), a UDP server on the host's 127.0.0.1 only is
/// reached at the host alias's IPv6 address, and ping6 of the host alias is answered by a host whose loopback has no ::1.
/// </summary>
[Trait("Tier", "Real")]
public sealed class DatagramRefusalTests : IDisposable
{
    private const string HostAlias6 = "fd00:6b69:7400::2";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-refusal-").FullName;

    public DatagramRefusalTests() => NetRun.RequirePrerequisites();

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    /// <summary>Sends on a connected UDP socket and waits 5 s for a reply: "LABEL reply=TEXT" or "LABEL errno=N ms=M".</summary>
    private const string Client = """
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[2] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.connect((sys.argv[2], int(sys.argv[3])))
s.settimeout(5)
t = time.monotonic()
s.send(sys.argv[4].encode())
try:
    print("%s reply=%s" % (sys.argv[1], s.recv(100).decode()), flush=True)
except OSError as e:
    print("%s errno=%d ms=%d" % (sys.argv[1], e.errno, (time.monotonic() - t) * 1000), flush=True)
""";

    /// <summary>A port nothing listens on now (bound on both loopbacks, then closed), for UDP.</summary>
    private static int ClosedPort()
    {
        for (int i = 0; i < 20; i++)
        {
            using var v6 = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp);
            v6.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
            int port = ((IPEndPoint)v6.LocalEndPoint!).Port;
            try
            {
                using var v4 = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
                v4.Bind(new IPEndPoint(IPAddress.Loopback, port));
                return port;
            }
            catch (SocketException)
            {
            }
        }
        throw new InvalidOperationException("no UDP port free on both loopbacks");
    }

    /// <summary>
    /// Nothing listens at the port: the host's kernel refuses the datagram (port unreachable to the flow's socket), the
    /// gateway answers the guest with ICMP port unreachable (IPv4) or ICMPv6 port unreachable (IPv6, after ::1 and then
    /// 127.0.0.1 refused), and Linux fails the guest's connected socket with ECONNREFUSED (111) at once instead of at its
    /// 5 s timeout. A UDP echo server on 127.0.0.1 only answers at the host alias's IPv6 address: ::1 refused the first
    /// datagram, the flow moved to 127.0.0.1 and the datagram was sent again there.
    /// </summary>
    [Fact]
    public async Task A_refused_datagram_fails_the_guests_connected_socket_at_once_and_the_ipv6_alias_reaches_127_0_0_1()
    {
        int closed = ClosedPort();
        using var echo = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        echo.Bind(new IPEndPoint(IPAddress.Loopback, ClosedPort()));
        int echoPort = ((IPEndPoint)echo.LocalEndPoint!).Port;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        var heard = new List<string>();
        Task serving = EchoAsync(echo, heard, stop.Token);
        string client = Path.Combine(_dir, "client.py");
        File.WriteAllText(client, Client);
        string script = NetRun.WaitForSlaac()
            + $"python3 {client} v4 192.168.65.2 {closed} knock; "
            + $"python3 {client} v6 {HostAlias6} {closed} knock; "
            + $"python3 {client} alias6 {HostAlias6} {echoPort} hello-from-v6; "
            + $"python3 {client} alias6again {HostAlias6} {echoPort} again";
        try
        {
            ProcessResult r = await NetRun.RunAsync(["--dns-upstream", "127.0.0.1:9"], script, Timeout);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            foreach (string family in (string[])["v4", "v6"])
            {
                Match m = Regex.Match(r.StandardOutput, $@"^{family} errno=(\d+) ms=(\d+)$", RegexOptions.Multiline);
                Assert.True(m.Success, NetRun.Describe(r));
                Assert.Equal("111", m.Groups[1].Value);
                Assert.True(int.Parse(m.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture) < 2000, r.StandardOutput);
            }
            Assert.Contains("alias6 reply=hello-from-v6", r.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("alias6again reply=again", r.StandardOutput, StringComparison.Ordinal);
            lock (heard)
            {
                Assert.Equal(["hello-from-v6", "again"], heard);
            }
        }
        finally
        {
            await stop.CancelAsync();
            echo.Dispose();
            await serving.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        }

        static async Task EchoAsync(Socket s, List<string> heard, CancellationToken stop)
        {
            byte[] buffer = new byte[2048];
            try
            {
                while (true)
                {
                    SocketReceiveFromResult got = await s.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.Any, 0), stop);
                    lock (heard)
                    {
                        heard.Add(System.Text.Encoding.ASCII.GetString(buffer, 0, got.ReceivedBytes));
                    }
                    await s.SendToAsync(buffer.AsMemory(0, got.ReceivedBytes), got.RemoteEndPoint, stop);
                }
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
            }
        }
    }

    /// <summary>
    /// `kit net run` itself in a network namespace whose loopback has no IPv6 (net.ipv6.conf.lo.disable_ipv6=1, so no
    /// ::1): ping6 of the host alias is still answered (the echo goes to 127.0.0.1 through the ICMP socket and the reply
    /// returns as ICMPv6), and UDP to the host alias's IPv6 address still reaches a server on 127.0.0.1.
    /// </summary>
    [Fact]
    public async Task Echo_and_udp_to_the_ipv6_host_alias_work_on_a_host_without_ipv6_loopback()
    {
        string client = Path.Combine(_dir, "client.py");
        File.WriteAllText(client, Client);
        string inner = NetRun.WaitForSlaac()
            + "busybox ping6 -c 3 -W 5 " + HostAlias6 + "; echo \"ping6 exit $?\"; "
            + $"python3 {client} alias6 {HostAlias6} 7777 hello";
        // The outer namespace: loopback up without IPv6, a UDP echo server on its 127.0.0.1:7777 (Python), then kit.
        string echoServer = Path.Combine(_dir, "echo.py");
        File.WriteAllText(echoServer, """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 7777))
s.settimeout(60)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
""");
        string outer = "ip link set lo up && sysctl -qw net.ipv6.conf.lo.disable_ipv6=1 && "
            + "! ip -6 addr show dev lo | grep -q '::1' && "
            + $"(python3 {echoServer} & echo $! > {_dir}/echo.pid) && sleep 0.3 && "
            + $"{KitCli.ExecutablePath} net run --dns-upstream 127.0.0.1:9 -- sh -c '{inner}'; rc=$?; kill $(cat {_dir}/echo.pid); exit $rc";
        ProcessResult r = await ProcessRunner.RunAsync("unshare", ["-n", "sh", "-c", outer], Timeout, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(r.ExitCode == 0, NetRun.Describe(r));
        Assert.Contains("ping6 exit 0", r.StandardOutput, StringComparison.Ordinal);
        Assert.Matches(@"3 packets transmitted, 3 (packets )?received", r.StandardOutput);
        Assert.Contains("alias6 reply=hello", r.StandardOutput, StringComparison.Ordinal);
    }
}
