using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// Echo forwarding to a non-gateway address, proven end to end without sending anything off this machine: `kit net
/// run` itself runs inside an outer namespace the test creates, where 10.200.0.1 is a local address and
/// net.ipv4.ping_group_range is set per case, so the gateway's host-side ICMP socket lives there and the outer
/// namespace's kernel answers. busybox ping in the inner namespace is the real client.
/// </summary>
[Trait("Tier", "Real")]
public sealed class IcmpForwardingTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90);
    private const string Target = "10.200.0.1";

    public IcmpForwardingTests() => NetRun.RequirePrerequisites();

    private static NetNamespace Outer(string pingGroupRange)
    {
        NetNamespace outer = NetNamespace.Create();
        foreach (string[] args in new[]
        {
            new[] { "-n", outer.Name, "link", "set", "lo", "up" },
            new[] { "-n", outer.Name, "addr", "add", $"{Target}/24", "dev", "lo" },
            new[] { "netns", "exec", outer.Name, "sysctl", "-qw", $"net.ipv4.ping_group_range={pingGroupRange}" },
        })
        {
            ProcessRunner.Run("ip", args, TimeSpan.FromSeconds(15)).EnsureSuccess();
        }
        return outer;
    }

    /// <summary>
    /// "0 0" lets root's group open an ICMP datagram socket (the kernel owns the identifier: the gateway must map the
    /// reply back); "1 0" (the default, nobody) makes the gateway fall back to a raw socket.
    /// </summary>
    [Theory]
    [InlineData("0 0", "unprivileged ICMP datagram socket")]
    [InlineData("1 0", "raw ICMP socket")]
    public async Task PingToAnAddressBeyondTheGatewayGetsEveryReplyWithTheGuestsIdAndSequence(string range, string mode)
    {
        using NetNamespace outer = Outer(range);
        string pcap = Path.Combine(Path.GetTempPath(), $"kit-{Guid.NewGuid():N}.pcap");
        try
        {
            ProcessResult r = await ProcessRunner.RunAsync("ip",
                ["netns", "exec", outer.Name, KitCli.ExecutablePath, "net", "run", "--pcap", pcap, "--",
                 "sh", "-c", $"busybox ping -c 3 -W 5 {Target} && busybox ping -c 2 -W 5 192.168.65.2"],
                Timeout, environment: new Dictionary<string, string?> { ["KIT_DEBUG"] = "1" }, cancellationToken: TestContext.Current.CancellationToken);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            Assert.Contains("ICMP echo forwarding: " + mode, r.Output);
            Assert.Contains("3 packets transmitted, 3 packets received", r.Output);
            for (int seq = 0; seq < 3; seq++)
            {
                Assert.Contains($"from {Target}: seq={seq} ", r.Output);
            }
            Assert.Contains("2 packets transmitted, 2 packets received", r.Output);

            // The frames on the guest's link: each reply from the target carries exactly the id and sequence of a
            // request the guest sent (busybox also checks the id, but this says it without trusting the client).
            ProcessResult t = await ProcessRunner.RunAsync("tshark",
                ["-r", pcap, "-Y", $"icmp && ip.addr == {Target}", "-T", "fields", "-e", "icmp.type", "-e", "icmp.ident", "-e", "icmp.seq"],
                TimeSpan.FromSeconds(60), cancellationToken: TestContext.Current.CancellationToken);
            Assert.True(t.ExitCode == 0, t.ToString());
            var requests = new List<string>();
            var replies = new List<string>();
            foreach (string line in t.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            {
                string[] f = line.Split('\t');
                (f[0] == "8" ? requests : replies).Add(f[1] + "/" + f[2]);
            }
            Assert.Equal(3, requests.Count);
            Assert.Equal(requests, replies);
        }
        finally
        {
            File.Delete(pcap);
        }
    }

    /// <summary>
    /// Neither socket kind allowed (ping_group_range excludes us, CAP_NET_RAW dropped): one warning line, the run
    /// still works, the gateway still answers its own echo, and an echo beyond it gets no reply. The inner namespace
    /// pings with an ICMP datagram socket from Python, since busybox ping needs the raw socket we took away.
    /// </summary>
    [Fact]
    public async Task WithoutIcmpSocketsTheRunWarnsOnceAndStillAnswersTheGateway()
    {
        using NetNamespace outer = Outer("1 0");
        const string Pinger = """
            import socket, sys
            def ping(dst):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
                s.settimeout(2)
                s.sendto(b"\x08\x00\x00\x00\x00\x00\x00\x01kit", (dst, 0))
                try:
                    return s.recv(100)[0] == 0
                except socket.timeout:
                    return False
            print("gateway", ping("192.168.65.1"), "remote", ping(sys.argv[1]))
            """;
        string file = Path.Combine(Path.GetTempPath(), $"kit-ping-{Guid.NewGuid():N}.py");
        await File.WriteAllTextAsync(file, Pinger, TestContext.Current.CancellationToken);
        try
        {
            ProcessResult r = await ProcessRunner.RunAsync("ip",
                ["netns", "exec", outer.Name, "setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw",
                 KitCli.ExecutablePath, "net", "run", "--",
                 "sh", "-c", $"sysctl -qw net.ipv4.ping_group_range='0 0' && python3 {file} {Target}"],
                Timeout, cancellationToken: TestContext.Current.CancellationToken);
            Assert.True(r.ExitCode == 0, NetRun.Describe(r));
            Assert.Contains("gateway True remote False", r.StandardOutput);
            Assert.Single(r.StandardError.Split('\n'), l => l.Contains("ICMP echo forwarding unavailable", StringComparison.Ordinal));
            Assert.Contains("ping_group_range", r.StandardError);
        }
        finally
        {
            File.Delete(file);
        }
    }
}
