using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Kit.Testing;

namespace Kit.Tests;

/// <summary>Issue 14, "Integration with supervisors": --ready-fd and --pid-file on a long-running command.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class SupervisionTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-supervision-");

    public void Dispose() => _dir.Delete(recursive: true);

    private string At(string name) => Path.Combine(_dir.FullName, name);

    [Fact]
    public async Task ReadyFdAndPidFileAreWrittenOnceServingAndThePidFileGoesAtExit()
    {
        // The shell opens descriptor 3 on a file and execs kit, so the pid of sh is kit's.
        string script = $"exec '{KitCli.ExecutablePath}' data serve --git '{At("store")}' --listen-9p tcp://127.0.0.1:0 --ready-fd 3 --pid-file '{At("kit.pid")}' 3>'{At("ready")}'";
        using RunningProcess kit = ProcessRunner.Start("sh", ["-c", script]);
        for (int i = 0; i < 300 && !(File.Exists(At("ready")) && File.ReadAllText(At("ready")) == "1"); i++)
        {
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
        Assert.Equal("1", File.ReadAllText(At("ready")));
        Assert.Equal(kit.Id.ToString(CultureInfo.InvariantCulture), File.ReadAllText(At("kit.pid")).Trim());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(At("kit.pid")));

        (await ProcessRunner.RunAsync("kill", ["-TERM", kit.Id.ToString(CultureInfo.InvariantCulture)], cancellationToken: TestContext.Current.CancellationToken)).EnsureSuccess();
        ProcessResult r = await kit.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
        Assert.False(r.TimedOut, r.Output);
        Assert.False(File.Exists(At("kit.pid")), "the pid file outlived kit");
    }

    /// <summary>systemd's Type=notify (contrib/systemd): READY=1 arrives on $NOTIFY_SOCKET once kit serves.</summary>
    [Fact]
    public async Task SystemdIsNotifiedWhenServing()
    {
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(At("notify")));
        using RunningProcess kit = ProcessRunner.Start(KitCli.ExecutablePath,
            ["data", "serve", "--git", At("store"), "--listen-9p", "tcp://127.0.0.1:0"],
            environment: new Dictionary<string, string?> { ["NOTIFY_SOCKET"] = At("notify") });
        byte[] buffer = new byte[256];
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        int n = await notify.ReceiveAsync(buffer, SocketFlags.None, timeout.Token);
        Assert.Equal("READY=1", Encoding.ASCII.GetString(buffer, 0, n));
        kit.Process.Kill();
    }

    [Fact]
    public void AStandardDescriptorIsNotAReadyFd()
    {
        ProcessResult r = KitCli.Run("data", "serve", "--git", At("store"), "--listen-9p", "tcp://127.0.0.1:0", "--ready-fd", "1");
        Assert.Equal(1, r.ExitCode);
        Assert.Equal("kit: --ready-fd: 1 is standard input, output or error; use an inherited descriptor (3 or more)", r.StandardError.Trim().Split('\n')[^1]);
    }

    [Fact]
    public void APidFileIsNeverWrittenThroughASymlink()
    {
        File.WriteAllText(At("victim"), "keep");
        File.CreateSymbolicLink(At("kit.pid"), At("victim"));
        ProcessResult r = KitCli.Run("data", "serve", "--git", At("store"), "--listen-9p", "tcp://127.0.0.1:0", "--pid-file", At("kit.pid"));
        Assert.Equal(1, r.ExitCode);
        Assert.StartsWith("kit: --pid-file: ", r.StandardError.Trim().Split('\n')[^1], StringComparison.Ordinal);
        Assert.Equal("keep", File.ReadAllText(At("victim")));
    }
}
