using Kit.Agent.Protocol;

namespace Kit.Agent.Tests;

/// <summary>The agent's pure parts: the /proc/net parser, wait statuses, the vsock address, the power button event.</summary>
public sealed class AgentUnitTests
{
    private const string Tcp = """
          sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
           1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
           2: 0A00020F:0016 0A000202:C350 01 00000000:00000000 02:00000000 00000000     0        0 3 4 0 20 4 30 10 -1
           3: 0F02000A:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
           4: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
        """;

    private const string Tcp6 = """
          sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
           0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
           1: 00000000000000000000000001000000:0277 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
           2: 0000000000000000FFFF00000100007F:1234 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
           3: garbage line
        """;

    private const string Udp = """
           sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
          100: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0
          101: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 2 2 0 0
          102: 00000000:1234 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 3 2 0 0
        """;

    [Fact]
    public void Proc_net_keeps_wildcard_and_public_listeners_only()
    {
        var ports = new List<ListeningPort>();
        ProcNet.Parse(Tcp, "tcp", ports);
        ProcNet.Parse(Tcp6, "tcp", ports);
        ProcNet.Parse(Udp, "udp", ports);
        Assert.Equal(
            [
                new ListeningPort("tcp", "0.0.0.0", 8080),
                new ListeningPort("tcp", "::", 80),
                new ListeningPort("tcp", "10.0.2.15", 80),
                new ListeningPort("udp", "0.0.0.0", 68),
            ],
            ProcNet.Normalize(ports).OrderBy(p => p.Protocol).ThenBy(p => p.Address == "0.0.0.0" ? 0 : p.Address == "::" ? 1 : 2));
    }

    [Fact]
    public void Proc_net_of_this_host_parses()
    {
        List<ListeningPort> ports = ProcNet.Read("/proc/net");
        Assert.All(ports, p => Assert.InRange(p.Port, 1, 65535));
        Assert.Empty(ProcNet.Read("/nonexistent"));
    }

    [Theory]
    [InlineData(0, 0, null)]
    [InlineData(7 << 8, 7, null)]
    [InlineData(2, 130, 2)]
    [InlineData(9 | 0x80, 137, 9)] // killed, core dumped
    [InlineData(-1, 255, null)]
    public void Wait_status_becomes_a_shell_exit_code(int status, int code, int? signal)
    {
        Assert.Equal((code, signal), ExecHandler.ExitCode(status));
    }

    [Fact]
    public void Vsock_address_is_a_sockaddr_vm()
    {
        Assert.Equal(new byte[] { 40, 0, 0, 0, 0x00, 0x04, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0 }, Listen.VsockAddress(1024));
    }

    [Fact]
    public void Only_a_power_key_press_is_the_power_button()
    {
        byte[] press = new byte[24];
        press[16] = 1; // EV_KEY
        press[18] = 116; // KEY_POWER
        press[20] = 1; // pressed
        Assert.True(PowerButton.IsPowerPress(press));
        press[20] = 0; // released
        Assert.False(PowerButton.IsPowerPress(press));
    }

    [Fact]
    public void Environment_merges_requests_onto_a_sane_base()
    {
        List<string> env = Child.Environment(new Dictionary<string, string> { ["PATH"] = "/x", ["A"] = "b" }, tty: true);
        Assert.Contains("PATH=/x", env);
        Assert.Contains("HOME=/root", env);
        Assert.Contains("TERM=xterm-256color", env);
        Assert.Contains("A=b", env);
        Assert.DoesNotContain(Child.Environment(null, tty: false), e => e.StartsWith("TERM=", StringComparison.Ordinal));
    }
}
