using System.Text;
using System.Text.RegularExpressions;
using Kit.Agent.Protocol;

namespace Kit.Agent.Tests;

/// <summary>Exec against the real NativeAOT agent, through the host's client API.</summary>
public sealed partial class ExecTests(AgentFixture fixture)
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private sealed record Result(int Code, string Stdout, string Stderr, int? Signal);

    private async Task<Result> RunAsync(ExecRequest request, Stream? stdin = null)
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using ExecSession session = await client.ExecAsync(request, timeout.Token);
        var stdout = new Capture();
        var stderr = new Capture();
        int code = await session.RunAsync(stdin, stdout, stderr, timeout.Token);
        return new Result(code, stdout.Text, stderr.Text, session.ExitSignal);
    }

    [Fact]
    public async Task Hello_reports_the_agent()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        Assert.Equal(AgentProtocolVersion.Current, client.Info.Version);
        Assert.Equal(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), client.Info.Kernel);
        Assert.Equal(Environment.MachineName, client.Info.Hostname);
        Assert.NotEmpty(client.Info.AgentVersion);
    }

    [Fact]
    public async Task Uname_prints_the_kernel()
    {
        Result r = await RunAsync(new ExecRequest(["uname", "-a"]));
        Assert.Equal(0, r.Code);
        Assert.StartsWith("Linux ", r.Stdout, StringComparison.Ordinal);
        Assert.Contains(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), r.Stdout, StringComparison.Ordinal);
        Assert.Equal("", r.Stderr);
    }

    [Fact]
    public async Task Exit_code_is_the_commands()
    {
        Result r = await RunAsync(new ExecRequest(["sh", "-c", "exit 7"]));
        Assert.Equal(7, r.Code);
        Assert.Null(r.Signal);
    }

    [Fact]
    public async Task Stdin_reaches_the_command_and_its_end_closes_it()
    {
        Result r = await RunAsync(new ExecRequest(["cat"]), new MemoryStream("hi\n"u8.ToArray()));
        Assert.Equal(0, r.Code);
        Assert.Equal("hi\n", r.Stdout);
    }

    [Fact]
    public async Task Null_stdin_is_closed_at_once()
    {
        Result r = await RunAsync(new ExecRequest(["cat"]));
        Assert.Equal(0, r.Code);
        Assert.Equal("", r.Stdout);
    }

    [Fact]
    public async Task Large_stdin_and_stdout_arrive_whole_and_in_order()
    {
        byte[] data = new byte[300_000];
        new Random(42).NextBytes(data);
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using ExecSession session = await client.ExecAsync(new ExecRequest(["cat"]), timeout.Token);
        var stdout = new Capture();
        int code = await session.RunAsync(new MemoryStream(data), stdout, new Capture(), timeout.Token);
        Assert.Equal(0, code);
        Assert.Equal(data, stdout.Bytes());
    }

    [Fact]
    public async Task Stderr_is_separate_from_stdout()
    {
        Result r = await RunAsync(new ExecRequest(["sh", "-c", "echo out; echo err >&2; exit 3"]));
        Assert.Equal(3, r.Code);
        Assert.Equal("out\n", r.Stdout);
        Assert.Equal("err\n", r.Stderr);
    }

    [Fact]
    public async Task Env_and_workdir_are_honoured_over_a_sane_base()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-agent-workdir-");
        try
        {
            Result r = await RunAsync(new ExecRequest(["sh", "-c", "echo \"$FOO|$HOME|$PATH\"; pwd"])
            {
                Env = new Dictionary<string, string> { ["FOO"] = "bar baz" },
                Workdir = dir.FullName,
            });
            Assert.Equal(0, r.Code);
            string[] lines = r.Stdout.Split('\n');
            Assert.Equal("bar baz|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", lines[0]);
            Assert.Equal(dir.FullName, lines[1]);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Workdir_defaults_to_root_home()
    {
        Result r = await RunAsync(new ExecRequest(["pwd"]));
        Assert.Equal(Directory.Exists("/root") ? "/root\n" : "/\n", r.Stdout);
    }

    [Fact]
    public async Task A_missing_program_is_not_found()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        var e = await Assert.ThrowsAsync<AgentExecException>(() => client.ExecAsync(new ExecRequest(["kit-no-such-program"]), timeout.Token));
        Assert.True(e.IsNotFound);
        Assert.Equal(127, e.ShellExitCode);
        Assert.Contains("no such file: kit-no-such-program", e.Message, StringComparison.Ordinal);

        await using AgentClient again = await fixture.Agent.ConnectAsync(timeout.Token);
        var path = await Assert.ThrowsAsync<AgentExecException>(() => again.ExecAsync(new ExecRequest(["/nonexistent/kit"]), timeout.Token));
        Assert.True(path.IsNotFound);
    }

    [Fact]
    public async Task A_missing_workdir_is_refused_but_not_as_not_found()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        var e = await Assert.ThrowsAsync<AgentExecException>(() =>
            client.ExecAsync(new ExecRequest(["true"]) { Workdir = "/nonexistent/kit-dir" }, timeout.Token));
        Assert.False(e.IsNotFound);
        Assert.Equal(126, e.ShellExitCode);
    }

    [Fact]
    public async Task A_forwarded_signal_ends_the_command_with_128_plus_signo()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using ExecSession session = await client.ExecAsync(new ExecRequest(["sleep", "100"]), timeout.Token);
        Assert.True(session.Pid > 0);
        Task<int> run = session.RunAsync(null, new Capture(), new Capture(), timeout.Token);
        await session.SignalAsync(2, timeout.Token);
        Assert.Equal(130, await run);
        Assert.Equal(2, session.ExitSignal);
    }

    [Fact]
    public async Task Closing_the_connection_kills_the_command()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        int pid;
        await using (AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token))
        {
            ExecSession session = await client.ExecAsync(new ExecRequest(["sleep", "100"]), timeout.Token);
            pid = session.Pid;
            Assert.True(Directory.Exists($"/proc/{pid}"));
        }
        // The agent kills and reaps it: its /proc entry goes away.
        for (int i = 0; i < 100 && Directory.Exists($"/proc/{pid}"); i++)
        {
            await Task.Delay(50, timeout.Token);
        }
        Assert.False(Directory.Exists($"/proc/{pid}"), $"pid {pid} still exists after its connection closed");
    }

    [Fact]
    public async Task Tty_command_runs_on_a_pty()
    {
        Result r = await RunAsync(new ExecRequest(["tty"]) { Tty = true });
        Assert.Equal(0, r.Code);
        Assert.Matches(PtsPath(), r.Stdout);
        Assert.Equal("", r.Stderr);
    }

    [Fact]
    public async Task Tty_has_the_requested_size_and_resize_changes_it()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using ExecSession session = await client.ExecAsync(
            new ExecRequest(["sh", "-c", "stty size; read line; stty size; echo \"$TERM\""]) { Tty = true, Rows = 33, Cols = 101 },
            timeout.Token);
        var stdout = new Capture();
        Task<int> run = session.RunAsync(null, stdout, new Capture(), timeout.Token);
        await stdout.WaitForAsync("33 101", Timeout);
        await session.ResizeAsync(40, 120, timeout.Token);
        await session.WriteStdinAsync("go\n"u8.ToArray(), timeout.Token);
        Assert.Equal(0, await run);
        Assert.Contains("40 120", stdout.Text, StringComparison.Ordinal);
        Assert.Contains("xterm-256color", stdout.Text, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Tty_stdin_end_is_end_of_file_and_signals_reach_the_foreground_group()
    {
        Result cat = await RunAsync(new ExecRequest(["cat"]) { Tty = true }, new MemoryStream("typed\n"u8.ToArray()));
        Assert.Equal(0, cat.Code);
        Assert.Contains("typed", cat.Stdout, StringComparison.Ordinal);

        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using ExecSession session = await client.ExecAsync(new ExecRequest(["sh", "-c", "echo ready; sleep 100"]) { Tty = true }, timeout.Token);
        var stdout = new Capture();
        Task<int> run = session.RunAsync(null, stdout, new Capture(), timeout.Token);
        await stdout.WaitForAsync("ready", Timeout);
        await session.SignalAsync(2, timeout.Token);
        Assert.Equal(130, await run);
    }

    [Fact]
    public async Task Many_commands_run_at_once()
    {
        var runs = new List<Task<Result>>();
        for (int i = 0; i < 8; i++)
        {
            runs.Add(RunAsync(new ExecRequest(["sh", "-c", $"sleep 0.2; echo {i}"])));
        }
        Result[] results = await Task.WhenAll(runs);
        for (int i = 0; i < results.Length; i++)
        {
            Assert.Equal($"{i}\n", results[i].Stdout);
        }
    }

    [Fact]
    public async Task A_second_request_on_one_client_is_refused_locally()
    {
        using var timeout = new CancellationTokenSource(Timeout);
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        await using ExecSession session = await client.ExecAsync(new ExecRequest(["true"]), timeout.Token);
        await Assert.ThrowsAsync<InvalidOperationException>(() => client.ExecAsync(new ExecRequest(["true"]), timeout.Token));
        Assert.Equal(0, await session.RunAsync(null, Stream.Null, Stream.Null, timeout.Token));
    }

    [GeneratedRegex(@"^/dev/pts/\d+\r?\n$")]
    private static partial Regex PtsPath();
}
