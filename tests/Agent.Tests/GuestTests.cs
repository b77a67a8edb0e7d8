using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Kit.Agent.Protocol;
using Kit.Testing;

namespace Kit.Agent.Tests;

/// <summary>
/// The agent where it ships: the default guest under `kit vm run --accel tcg --vsock PATH`, kit-agent (the NativeAOT
/// binary, with the host's glibc under /kit/lib) started by the guest script, the host reaching it through the VMM's
/// Firecracker-style socket (<c>CONNECT 1024</c>, <c>OK n</c>) with <see cref="AgentClient"/>. Proves AF_VSOCK
/// listening and accepting in a real guest, exec with and without a PTY there, and that Shutdown powers it off.
/// </summary>
[Trait("Tier", "Real")]
public sealed partial class GuestTests(AgentFixture fixture, ITestOutputHelper output)
{
    private const string GuestScript = """
        /kit/bin/kit-agent --no-power-button &
        wait
        """;

    [Fact]
    public async Task The_agent_in_a_guest_answers_over_vsock_and_powers_the_guest_off()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        // The kit that runs the VM: ./test's published one (KIT_EXE), else the last `./kit` build. This project does not
        // reference src/Kit, so there is no kit beside the tests to fall back to.
        string kit = Environment.GetEnvironmentVariable("KIT_EXE") is { Length: > 0 } exe ? exe : Path.Combine(RepoPaths.Root, "artifacts", "kit", "kit");
        Assert.True(File.Exists(kit), $"{kit}: no kit to run the VM (./test sets KIT_EXE; ./kit --version builds artifacts/kit/kit)");
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        DirectoryInfo work = Directory.CreateTempSubdirectory("kit-agent-guest-");
        try
        {
            string initrd = Path.Combine(work.FullName, "agent.initrd");
            await image.WriteInitrdAsync(initrd, GuestScript, AgentFiles(fixture.Executable), cancel);
            string vsock = Path.Combine(work.FullName, "v.sock");
            using RunningProcess vm = ProcessRunner.Start(kit, ["vm", "run", "--kernel", image.Kernel, "--initrd", initrd, "--memory", "512M",
                "--accel", "tcg", "--cmdline", "console=ttyS0 reboot=k panic=-1 no_timer_check", "--vsock", vsock]);
            await vm.WaitForLineAsync(l => l.Contains("kit-agent: listening on vsock:1024", StringComparison.Ordinal),
                TimeSpan.FromMinutes(3), cancel);

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            timeout.CancelAfter(TimeSpan.FromMinutes(2));
            await using (AgentClient client = await AgentClient.ConnectAsync(await ConnectAsync(vsock, timeout.Token), timeout.Token))
            {
                Assert.Equal(image.KernelVersion, client.Info.Kernel);
                Assert.Equal("kit-guest", client.Info.Hostname);
            }
            (int code, string text) = await ExecAsync(vsock, new ExecRequest(["uname", "-a"]), timeout.Token);
            Assert.Equal(0, code);
            Assert.Contains(image.KernelVersion, text, StringComparison.Ordinal);
            (code, text) = await ExecAsync(vsock, new ExecRequest(["sh", "-c", "tty; stty size"]) { Tty = true, Rows = 30, Cols = 90 }, timeout.Token);
            Assert.Equal(0, code);
            Assert.Matches(PtsAndSize(), text);
            (code, _) = await ExecAsync(vsock, new ExecRequest(["sh", "-c", "exit 3"]), timeout.Token);
            Assert.Equal(3, code);

            await using (AgentClient client = await AgentClient.ConnectAsync(await ConnectAsync(vsock, timeout.Token), timeout.Token))
            {
                await client.ShutdownAsync(timeout.Token);
            }
            ProcessResult ended = await vm.WaitAsync(TimeSpan.FromMinutes(1), cancel);
            output.WriteLine(Text.Tail(ended.Output, 4000));
            Assert.False(ended.TimedOut, "the guest did not power off after Shutdown");
            Assert.Contains("shutting down: Shutdown request from the host", ended.Output, StringComparison.Ordinal);
            Assert.Equal(0, ended.ExitCode);
        }
        finally
        {
            work.Delete(recursive: true);
        }
    }

    private static async Task<(int Code, string Stdout)> ExecAsync(string vsock, ExecRequest request, CancellationToken ct)
    {
        await using AgentClient client = await AgentClient.ConnectAsync(await ConnectAsync(vsock, ct), ct);
        await using ExecSession session = await client.ExecAsync(request, ct);
        var stdout = new Capture();
        int code = await session.RunAsync(null, stdout, Stream.Null, ct);
        return (code, stdout.Text);
    }

    /// <summary>The host's half of the VMM's vsock socket: <c>CONNECT 1024\n</c>, then <c>OK n\n</c>, then the stream.</summary>
    private static async Task<Stream> ConnectAsync(string path, CancellationToken ct)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(path), ct);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var stream = new NetworkStream(socket, ownsSocket: true);
        try
        {
            await stream.WriteAsync(Encoding.ASCII.GetBytes($"CONNECT {AgentPort.Vsock}\n"), ct);
            var line = new StringBuilder();
            byte[] one = new byte[1];
            while (line.Length < 64 && await stream.ReadAsync(one, ct) == 1 && one[0] != '\n')
            {
                line.Append((char)one[0]);
            }
            Assert.StartsWith("OK ", line.ToString(), StringComparison.Ordinal);
            return stream;
        }
        catch
        {
            await stream.DisposeAsync();
            throw;
        }
    }

    /// <summary>kit-agent and the shared libraries ldd names, under /kit/lib, started through the dynamic loader.</summary>
    private static Dictionary<string, byte[]> AgentFiles(string agent)
    {
        string ldd = ProcessRunner.Run("ldd", [agent]).EnsureSuccess().StandardOutput;
        var files = new Dictionary<string, byte[]> { ["kit/lib/kit-agent"] = File.ReadAllBytes(agent) };
        string? loader = null;
        foreach (Match m in LibraryPath().Matches(ldd))
        {
            string name = Path.GetFileName(m.Groups[1].Value);
            files[$"kit/lib/{name}"] = File.ReadAllBytes(m.Groups[1].Value);
            if (name.StartsWith("ld-linux", StringComparison.Ordinal))
            {
                loader = name;
            }
        }
        Assert.NotNull(loader);
        files["kit/bin/kit-agent"] = Encoding.ASCII.GetBytes(
            $"#!/bin/sh\nexec /kit/lib/{loader} --library-path /kit/lib /kit/lib/kit-agent \"$@\"\n");
        return files;
    }

    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    [GeneratedRegex(@"(?m)(/\S+) \(0x[0-9a-f]+\)")]
    private static partial Regex LibraryPath();

    [GeneratedRegex(@"^/dev/pts/\d+\r?\n30 90\r?\n$")]
    private static partial Regex PtsAndSize();
}
