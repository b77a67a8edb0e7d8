using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// The guest is not trusted with the host: a stand-in agent inside the guest (python, on the agent's vsock port after the
/// real one is moved aside) answers the machine daemon with garbage, an oversized frame, frames out of order, and port
/// lists that claim a host port already in use, a loopback-only listener, impossible ports and thousands of ports. The
/// daemon stays up, says why it dropped each connection, forwards only what it should, and the real agent takes over
/// again afterwards.
/// </summary>
[Trait("Tier", "Real")]
public sealed class HostileAgentTests(ITestOutputHelper output) : IDisposable
{
    private const string Name = "hostile";
    private readonly MachineHarness _h = new();

    public void Dispose() => _h.Dispose();

    private const string Script = """
        import json, os, socket, struct, subprocess, sys, time

        busy, good = int(sys.argv[1]), int(sys.argv[2])

        def frame(kind, payload=b""):
            body = bytes([kind]) + payload
            return struct.pack("<I", len(body)) + body

        def msg(kind, obj):
            return frame(kind, json.dumps(obj).encode())

        def hello():
            return msg(0x01, {"version": 1, "agentVersion": "hostile", "hostname": "hostile", "kernel": "none"})

        # Let the kit exec that started this return first, then take the agent's port: move the real agent aside (init's
        # respawn then waits for it) and stop it.
        time.sleep(2)
        os.rename("/run/kit/kit-agent", "/run/kit/kit-agent.real")
        subprocess.run(["pkill", "-x", "kit-agent"])
        srv = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        for _ in range(100):
            try:
                srv.bind((socket.VMADDR_CID_ANY, 1024))
                break
            except OSError:
                time.sleep(0.1)
        srv.listen(8)
        print("hostile agent listening", flush=True)

        many = [{"protocol": "tcp", "address": "0.0.0.0", "port": 20000 + i} for i in range(5000)]
        behaviours = [
            lambda c: c.sendall(b"GARBAGE GARBAGE GARBAGE\n"),
            lambda c: c.sendall(struct.pack("<I", 0xFFFFFFF0) + b"\x01"),
            lambda c: c.sendall(frame(0x01) + frame(0x01)),
            lambda c: (c.sendall(hello()), c.sendall(frame(0x31, b"out of order stdout"))),
            lambda c: (c.sendall(hello()), c.sendall(msg(0x40, {"ports": [
                {"protocol": "tcp", "address": "0.0.0.0", "port": busy},
                {"protocol": "tcp", "address": "127.0.0.1", "port": good + 1},
                {"protocol": "tcp", "address": "0.0.0.0", "port": 0},
                {"protocol": "tcp", "address": "0.0.0.0", "port": 70000},
                {"protocol": "sctp", "address": "0.0.0.0", "port": good + 2},
                {"protocol": "tcp", "address": "not an address", "port": good + 3},
                {"protocol": "tcp", "address": "0.0.0.0", "port": good}]})), time.sleep(6),
                c.sendall(msg(0x40, {"ports": many})), time.sleep(4)),
        ]
        for behave in behaviours:
            conn, _ = srv.accept()
            conn.recv(65536)  # the daemon's Hello (and request), ignored
            try:
                behave(conn)
                time.sleep(1)
            except OSError:
                pass
            conn.close()
            print("served one hostile connection", flush=True)
        srv.close()
        os.rename("/run/kit/kit-agent.real", "/run/kit/kit-agent")
        print("hostile agent done", flush=True)
        """;

    [Fact]
    public async Task The_daemon_survives_a_hostile_agent_and_forwards_only_what_it_should()
    {
        ProcessResult up = await _h.KitAsync(["up", Name, "--accel", "tcg", "--dns-upstream", _h.DnsUpstream, "--memory", "1G"], TimeSpan.FromMinutes(15));
        Assert.True(up.ExitCode == 0, up.ToString());

        using var busy = new TcpListener(IPAddress.Loopback, 0);
        busy.Start();
        int busyPort = ((IPEndPoint)busy.LocalEndpoint).Port;
        int good = LoopbackPort.Free();
        ProcessResult copy = await _h.KitAsync(["exec", Name, "--", "sh", "-c", "cat > /root/hostile.py"], TimeSpan.FromSeconds(60), stdin: Script);
        Assert.True(copy.ExitCode == 0, copy.ToString());
        ProcessResult start = await _h.ExecAsync(Name,
            $"(setsid nohup python3 /root/hostile.py {busyPort} {good} > /root/hostile.log 2>&1 < /dev/null &); sleep 1; cat /root/hostile.log");
        output.WriteLine(start.ToString());

        // While the hostile agent talks: the daemon answers, takes the one good port, reports the busy one, never more
        // than its bound.
        var clock = Stopwatch.StartNew();
        bool sawGood = false, sawBusy = false;
        int most = 0;
        while (clock.Elapsed < TimeSpan.FromSeconds(60) && !(sawGood && sawBusy && most > 0 && clock.Elapsed > TimeSpan.FromSeconds(20)))
        {
            using JsonDocument status = await _h.StatusAsync(Name);
            JsonElement[] ports = [.. status.RootElement.GetProperty("ports").EnumerateArray()];
            most = Math.Max(most, ports.Length);
            sawGood |= ports.Any(p => p.GetProperty("hostPort").GetInt32() == good && !p.TryGetProperty("problem", out _));
            sawBusy |= ports.Any(p => p.GetProperty("hostPort").GetInt32() == busyPort && p.TryGetProperty("problem", out JsonElement why)
                && why.GetString()!.Contains("in use", StringComparison.Ordinal));
            Assert.DoesNotContain(ports, p => p.GetProperty("hostPort").GetInt32() is 0 or > 65535 || p.GetProperty("hostPort").GetInt32() == good + 1
                || p.GetProperty("hostPort").GetInt32() == good + 2 || p.GetProperty("hostPort").GetInt32() == good + 3);
            await Task.Delay(500, TestContext.Current.CancellationToken);
        }
        Assert.True(sawGood, "the one valid guest listener was never forwarded");
        Assert.True(sawBusy, "the busy host port was not reported as in use");
        Assert.True(most <= 256, $"the daemon held {most} forwards for a guest that claimed 5,000");

        // The real agent comes back (init respawns it once its binary is back) and exec works again.
        ProcessResult again = await MachineHarness.RetryAsync(() => _h.ExecAsync(Name, "echo back"), TimeSpan.FromSeconds(90));
        Assert.Equal("back\n", again.StandardOutput);
        string log = File.ReadAllText(Path.Combine(_h.Data, "kit", "machines", Name, "machine.log"));
        output.WriteLine(Text.Tail(log, 4000));
        Assert.Contains("lost the agent", log, StringComparison.Ordinal);
        ProcessResult down = await _h.KitAsync(["down", Name], TimeSpan.FromMinutes(3));
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.Empty(_h.LeftoverProcesses());
    }
}
