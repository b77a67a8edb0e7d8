using System.Diagnostics;
using System.Globalization;
using System.Net.Http;
using System.Net.Sockets;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// Issue 15's acceptance, as a user meets it, on QEMU's software CPU here (`--accel tcg`): `kit up` of a Debian 12
/// machine, `kit exec` (output, exit codes, stdin), a guest listener reachable on the host's loopback and closed again,
/// a shared host directory, a static forward written through DataKit and applied live, `kit status --json`, a `kit
/// shell` driven through tmux, a file that survives `kit down` / `kit up`, a killed daemon shown as crashed and
/// recovered, and nothing left running after `kit down`. Steps run in order on one machine (each boot costs tens of
/// seconds under TCG); each says what it checks when it fails.
/// </summary>
[Trait("Tier", "Real")]
public sealed class MachineLifecycleTests(ITestOutputHelper output) : IDisposable
{
    private const string Name = "lifecycle";
    private readonly MachineHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Fact]
    public async Task A_machine_lives_through_exec_ports_mounts_datakit_shell_restart_and_a_crash()
    {
        string share = Directory.CreateDirectory(Path.Combine(_h.Root, "share")).FullName;
        var clock = Stopwatch.StartNew();
        ProcessResult up = await _h.KitAsync(["up", Name, "--accel", "tcg", "--mount", share, "--dns-upstream", _h.DnsUpstream, "--memory", "1G"], TimeSpan.FromMinutes(15));
        output.WriteLine($"kit up: {clock.Elapsed.TotalSeconds:0.0} s\n{up}");
        Assert.True(up.ExitCode == 0, $"kit up failed\n{up}\n{Log()}");
        Assert.Contains($"kit up: {Name} is running", up.StandardError, StringComparison.Ordinal);

        // kit up again: harmless.
        ProcessResult again = await _h.KitAsync(["up", Name], TimeSpan.FromSeconds(60));
        Assert.True(again.ExitCode == 0 && again.StandardError.Contains("already running", StringComparison.Ordinal), again.ToString());

        // A second machine beside it: its own daemon, network and branch; each answers with its own name.
        ProcessResult second = await _h.KitAsync(["up", "second", "--accel", "tcg", "--dns-upstream", _h.DnsUpstream, "--memory", "512M"], TimeSpan.FromMinutes(15));
        Assert.True(second.ExitCode == 0, second.ToString());
        Assert.Equal("second\n", (await _h.ExecAsync("second", "hostname")).StandardOutput);
        Assert.Equal($"{Name}\n", (await _h.ExecAsync(Name, "hostname")).StandardOutput);
        Assert.True((await _h.KitAsync(["down", "second"], TimeSpan.FromMinutes(3))).ExitCode == 0);
        Assert.True((await _h.KitAsync(["rm", "second"], TimeSpan.FromSeconds(60))).ExitCode == 0);

        // exec: output, exit codes, stdin.
        ProcessResult uname = await _h.KitAsync(["exec", Name, "--", "uname", "-a"], TimeSpan.FromSeconds(60));
        Assert.True(uname.ExitCode == 0 && uname.StandardOutput.StartsWith("Linux ", StringComparison.Ordinal), uname.ToString());
        ProcessResult seven = await _h.ExecAsync(Name, "exit 7");
        Assert.Equal(7, seven.ExitCode);
        ProcessResult cat = await _h.KitAsync(["exec", Name, "--", "cat"], TimeSpan.FromSeconds(60), stdin: "hi\n");
        Assert.True(cat.ExitCode == 0 && cat.StandardOutput == "hi\n", cat.ToString());
        ProcessResult missing = await _h.KitAsync(["exec", Name, "--", "no-such-command-here"], TimeSpan.FromSeconds(60));
        Assert.True(missing.ExitCode == 127, missing.ToString());
        // Ctrl-C (SIGINT to kit) reaches the command: sleep dies of it, and kit exits as a shell would (128 + 2).
        using (RunningProcess sleeper = ProcessRunner.Start(KitCli.ExecutablePath, ["exec", Name, "--", "sleep", "100"], _h.Environment))
        {
            await Task.Delay(3000, TestContext.Current.CancellationToken);
            (await ProcessRunner.RunAsync("kill", ["-INT", sleeper.Id.ToString(CultureInfo.InvariantCulture)], TimeSpan.FromSeconds(10),
                cancellationToken: TestContext.Current.CancellationToken)).EnsureSuccess();
            ProcessResult interrupted = await sleeper.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
            Assert.True(interrupted.ExitCode == 130, interrupted.ToString());
        }
        ProcessResult os = await _h.ExecAsync(Name, ". /etc/os-release; echo $VERSION_CODENAME");
        Assert.Equal("bookworm", os.StandardOutput.Trim());

        // Ports: a guest listener appears on the host's 127.0.0.1 within a second or two and goes with it.
        int port = LoopbackPort.Free();
        ProcessResult server = await _h.ExecAsync(Name,
            $"cd /tmp && echo from-the-guest > index.html && (nohup python3 -m http.server {port} >/dev/null 2>&1 </dev/null & echo $! > /tmp/http.pid)");
        Assert.True(server.ExitCode == 0, server.ToString());
        string page = await PollHttpAsync(port, TimeSpan.FromSeconds(30));
        Assert.Equal("from-the-guest\n", page);
        using (JsonDocument status = await _h.StatusAsync(Name))
        {
            JsonElement root = status.RootElement;
            Assert.Equal("running", root.GetProperty("state").GetString());
            Assert.Equal("tcg", root.GetProperty("accel").GetString());
            Assert.Contains(root.GetProperty("ports").EnumerateArray(), p => p.GetProperty("hostPort").GetInt32() == port && !p.TryGetProperty("problem", out _));
        }
        Assert.Equal(0, (await _h.ExecAsync(Name, "kill $(cat /tmp/http.pid)")).ExitCode);
        await PollUntilClosedAsync(port, TimeSpan.FromSeconds(15));

        // A shared directory: written in the guest, read on the host.
        ProcessResult wrote = await _h.ExecAsync(Name, $"echo written-in-the-guest > {share}/from-guest && ls -l {share}/from-guest");
        Assert.True(wrote.ExitCode == 0, wrote.ToString());
        Assert.Equal("written-in-the-guest\n", await File.ReadAllTextAsync(Path.Combine(share, "from-guest"), TestContext.Current.CancellationToken));

        // DataKit as the control plane: a static forward written from the guest's /datakit is applied live (on top of
        // the automatic forward of the same listener, which keeps its own host port).
        int staticPort = LoopbackPort.Free();
        int guestPort = LoopbackPort.Free();
        ProcessResult forward = await _h.ExecAsync(Name, string.Join('\n',
            $"cd /tmp && (nohup python3 -m http.server {guestPort} >/dev/null 2>&1 </dev/null &)",
            $"t=/datakit/branch/machine-{Name}/transactions/port-$$",
            "mkdir $t || exit 10",
            $"echo {staticPort}:{guestPort} >> $t/rw/config/ports || exit 11",
            "echo 'add a static forward' > $t/msg",
            "echo commit > $t/ctl || exit 12"));
        Assert.True(forward.ExitCode == 0, forward.ToString());
        Assert.Equal("from-the-guest\n", await PollHttpAsync(staticPort, TimeSpan.FromSeconds(30)));
        ProcessResult log = await ProcessRunner.RunAsync("git", ["--git-dir", _h.Store, "log", "--format=%s", $"machine-{Name}"], TimeSpan.FromSeconds(30), cancellationToken: TestContext.Current.CancellationToken);
        output.WriteLine(log.StandardOutput);
        Assert.Contains("add a static forward", log.StandardOutput, StringComparison.Ordinal);
        Assert.Contains($"kit up {Name}: created", log.StandardOutput, StringComparison.Ordinal);

        // kit shell through a real terminal (tmux): a command runs, and exit ends it.
        await ShellThroughTmuxAsync();

        // A file written in the guest survives kit down / kit up.
        Assert.Equal(0, (await _h.ExecAsync(Name, "echo kept > /root/persist && sync")).ExitCode);
        ProcessResult down = await _h.KitAsync(["down", Name], TimeSpan.FromMinutes(3));
        output.WriteLine(down.ToString());
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.Contains("pressed the ACPI power button", Log(), StringComparison.Ordinal);
        Assert.Empty(_h.LeftoverProcesses());
        using (JsonDocument status = await _h.StatusAsync(Name))
        {
            Assert.Equal("stopped", status.RootElement.GetProperty("state").GetString());
        }
        clock.Restart();
        up = await _h.KitAsync(["up", Name], TimeSpan.FromMinutes(15));
        output.WriteLine($"kit up (second boot): {clock.Elapsed.TotalSeconds:0.0} s\n{up}");
        Assert.True(up.ExitCode == 0, up.ToString());
        Assert.Equal("kept\n", (await _h.ExecAsync(Name, "cat /root/persist")).StandardOutput);

        // A daemon killed outright: status says crashed (with the log's tail), and kit up recovers.
        int pid = _h.DaemonPid(Name) ?? throw new InvalidOperationException("no pid file");
        Process.GetProcessById(pid).Kill();
        await WaitUntilAsync(() => _h.LeftoverProcesses().Count == 0, TimeSpan.FromSeconds(30), "QEMU did not die with its daemon");
        using (JsonDocument status = await _h.StatusAsync(Name))
        {
            Assert.Equal("crashed", status.RootElement.GetProperty("state").GetString());
            Assert.True(status.RootElement.GetProperty("logTail").GetArrayLength() > 0);
        }
        up = await _h.KitAsync(["up", Name], TimeSpan.FromMinutes(15));
        Assert.True(up.ExitCode == 0 && up.StandardError.Contains("had crashed", StringComparison.Ordinal), up.ToString());
        Assert.Equal("kept\n", (await _h.ExecAsync(Name, "cat /root/persist")).StandardOutput);

        down = await _h.KitAsync(["down", Name], TimeSpan.FromMinutes(3));
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.Empty(_h.LeftoverProcesses());
        ProcessResult rm = await _h.KitAsync(["rm", Name], TimeSpan.FromSeconds(60));
        Assert.True(rm.ExitCode == 0, rm.ToString());
        Assert.False(Directory.Exists(Path.Combine(_h.Data, "kit", "machines", Name)));
    }

    private async Task ShellThroughTmuxAsync()
    {
        string session = $"kit-shell-{System.Environment.ProcessId}";
        string env = string.Join(' ', _h.Environment.Select(kv => $"{kv.Key}={kv.Value}"));
        string command = $"env {env} {KitCli.ExecutablePath} shell {Name}; echo shell-exit=$? > {_h.Root}/shell-exit; sleep 30";
        await ProcessRunner.RunAsync("tmux", ["new-session", "-d", "-s", session, "-x", "120", "-y", "40", command], TimeSpan.FromSeconds(30));
        try
        {
            await WaitUntilAsync(() => Capture(session).Contains('#', StringComparison.Ordinal), TimeSpan.FromSeconds(60), "no shell prompt in tmux:\n" + Capture(session));
            await ProcessRunner.RunAsync("tmux", ["send-keys", "-t", session, "echo $((6*7)) > /root/from-shell; stty size", "Enter"], TimeSpan.FromSeconds(10));
            await WaitUntilAsync(() => Capture(session).Contains("40 120", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "stty size did not show the tmux window:\n" + Capture(session));
            await ProcessRunner.RunAsync("tmux", ["send-keys", "-t", session, "exit", "Enter"], TimeSpan.FromSeconds(10));
            string exitFile = Path.Combine(_h.Root, "shell-exit");
            await WaitUntilAsync(() => File.Exists(exitFile), TimeSpan.FromSeconds(30), "kit shell did not end:\n" + Capture(session));
            Assert.Equal("shell-exit=0", File.ReadAllText(exitFile).Trim());
            Assert.Equal("42\n", (await _h.ExecAsync(Name, "cat /root/from-shell")).StandardOutput);
        }
        finally
        {
            await ProcessRunner.RunAsync("tmux", ["kill-session", "-t", session], TimeSpan.FromSeconds(10));
        }
    }

    private static string Capture(string session) =>
        ProcessRunner.Run("tmux", ["capture-pane", "-p", "-t", session], TimeSpan.FromSeconds(10)).StandardOutput;

    private string Log()
    {
        string path = Path.Combine(_h.Data, "kit", "machines", Name, "machine.log");
        return File.Exists(path) ? Text.Tail(File.ReadAllText(path), 6000) : "(no machine log)";
    }

    private static async Task<string> PollHttpAsync(int port, TimeSpan timeout)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        var clock = Stopwatch.StartNew();
        Exception? last = null;
        while (clock.Elapsed < timeout)
        {
            try
            {
                return await http.GetStringAsync(new Uri($"http://127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}/index.html"));
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                last = e;
            }
            await Task.Delay(200);
        }
        throw new TimeoutException($"nothing answered on 127.0.0.1:{port} within {timeout.TotalSeconds} s: {last?.Message}");
    }

    private static async Task PollUntilClosedAsync(int port, TimeSpan timeout)
    {
        await WaitUntilAsync(() =>
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                s.Connect(System.Net.IPAddress.Loopback, port);
                return false;
            }
            catch (SocketException)
            {
                return true;
            }
        }, timeout, $"127.0.0.1:{port} still accepts after the guest's server stopped");
    }

    private static async Task WaitUntilAsync(Func<bool> condition, TimeSpan timeout, string failure)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout)
            {
                Assert.Fail(failure);
            }
            await Task.Delay(200);
        }
    }
}
