using System.Diagnostics;
using System.Globalization;
using System.Net.Http;
using System.Text.Json;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Machines;

/// <summary>
/// `kit up --docker` with no registry: the host's docker client, pointed at the socket `kit status --json` names, imports
/// a busybox root made here from Debian's busybox-static, runs its httpd with `-p HOSTPORT:80`, and the host's loopback
/// gets the page through the forward the guest's docker-proxy listener caused.
/// </summary>
[Trait("Tier", "Real")]
public sealed class DockerMachineTests(ITestOutputHelper output) : IDisposable
{
    private const string Name = "docker";
    private readonly MachineHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Fact]
    public async Task The_host_docker_client_runs_a_container_whose_port_reaches_the_host()
    {
        string docker = FindOnPath("docker") ?? throw new InvalidOperationException("the docker client is not on PATH (./test installs docker.io's client)");
        var clock = Stopwatch.StartNew();
        ProcessResult up = await _h.KitAsync(["up", Name, "--docker", "--accel", "tcg", "--dns-upstream", _h.DnsUpstream, "--memory", "2G"], TimeSpan.FromMinutes(20));
        output.WriteLine($"kit up --docker: {clock.Elapsed.TotalSeconds:0.0} s\n{up}");
        Assert.True(up.ExitCode == 0, up.ToString());
        string socket;
        using (JsonDocument status = await _h.StatusAsync(Name))
        {
            socket = status.RootElement.GetProperty("dockerSocket").GetString()!;
        }
        var env = new Dictionary<string, string?> { ["DOCKER_HOST"] = $"unix://{socket}", ["DOCKER_CONFIG"] = Path.Combine(_h.Root, "docker-config") };

        // dockerd starts in the background after the agent; wait for it to answer.
        ProcessResult version = await MachineHarness.RetryAsync(() => ProcessRunner.RunAsync(docker, ["version", "--format", "{{.Server.Version}}"], TimeSpan.FromSeconds(30), environment: env,
            cancellationToken: TestContext.Current.CancellationToken), TimeSpan.FromMinutes(3));
        output.WriteLine($"dockerd {version.StandardOutput.Trim()} answered after {clock.Elapsed.TotalSeconds:0.0} s");
        Assert.True(version.ExitCode == 0, version.ToString());

        // A root filesystem from the host's busybox-static: busybox, its sh and httpd, and a page.
        string rootfs = Directory.CreateDirectory(Path.Combine(_h.Root, "rootfs")).FullName;
        Directory.CreateDirectory(Path.Combine(rootfs, "bin"));
        Directory.CreateDirectory(Path.Combine(rootfs, "www"));
        File.Copy("/bin/busybox", Path.Combine(rootfs, "bin", "busybox"));
        File.CreateSymbolicLink(Path.Combine(rootfs, "bin", "sh"), "busybox");
        File.CreateSymbolicLink(Path.Combine(rootfs, "bin", "httpd"), "busybox");
        await File.WriteAllTextAsync(Path.Combine(rootfs, "www", "index.html"), "served by a container\n", TestContext.Current.CancellationToken);
        string tar = Path.Combine(_h.Root, "rootfs.tar");
        (await ProcessRunner.RunAsync("tar", ["-C", rootfs, "-cf", tar, "."], TimeSpan.FromSeconds(60), cancellationToken: TestContext.Current.CancellationToken)).EnsureSuccess();
        ProcessResult import = await ProcessRunner.RunAsync(docker, ["import", tar, "kit-test/busybox:1"], TimeSpan.FromMinutes(3), environment: env,
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(import.ExitCode == 0, import.ToString());

        int port = LoopbackPort.Free();
        ProcessResult run = await ProcessRunner.RunAsync(docker, ["run", "-d", "--name", "web", "-p", $"{port.ToString(CultureInfo.InvariantCulture)}:80", "kit-test/busybox:1",
            "/bin/httpd", "-f", "-p", "80", "-h", "/www"], TimeSpan.FromMinutes(3), environment: env, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(run.ExitCode == 0, run.ToString());

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        string? page = null;
        var wait = Stopwatch.StartNew();
        while (page is null && wait.Elapsed < TimeSpan.FromSeconds(60))
        {
            try
            {
                page = await http.GetStringAsync(new Uri($"http://127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}/index.html"), TestContext.Current.CancellationToken);
            }
            catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
            {
                await Task.Delay(500, TestContext.Current.CancellationToken);
            }
        }
        Assert.Equal("served by a container\n", page);

        ProcessResult rm = await ProcessRunner.RunAsync(docker, ["rm", "-f", "web"], TimeSpan.FromMinutes(2), environment: env, cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(rm.ExitCode == 0, rm.ToString());
        ProcessResult down = await _h.KitAsync(["down", Name], TimeSpan.FromMinutes(3));
        Assert.True(down.ExitCode == 0, down.ToString());
        Assert.Empty(_h.LeftoverProcesses());
    }

    private static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);
}
