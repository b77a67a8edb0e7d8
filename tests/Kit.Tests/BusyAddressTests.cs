using System.Net;
using System.Net.Sockets;
using Kit.Testing;

namespace Kit.Tests;

/// <summary>
/// Issue 14 item 1: an address another server holds is refused in one line with a non-zero exit. .NET's ReuseAddress
/// set SO_REUSEPORT on Linux, so a second `kit data serve` on a busy TCP port said "serving" and the kernel split clients
/// between two stores (docs/security.md, "Ports").
/// </summary>
public sealed class BusyAddressTests : IDisposable
{
    private static readonly TimeSpan Startup = TimeSpan.FromSeconds(60);
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-busy-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public async Task SecondDataServeOnABusyTcpPortExitsNonZero()
    {
        int port = LoopbackPort.Free();
        string address = $"tcp://127.0.0.1:{port}";
        using RunningProcess first = KitCli.Start("data", "serve", "--git", Path.Combine(_dir.FullName, "a"), "--listen-9p", address);
        await first.WaitForLineAsync(l => l.Contains("serving", StringComparison.Ordinal), Startup, TestContext.Current.CancellationToken);

        ProcessResult second = await ProcessRunner.RunAsync(KitCli.ExecutablePath,
            ["data", "serve", "--git", Path.Combine(_dir.FullName, "b"), "--listen-9p", address], TimeSpan.FromSeconds(30),
            cancellationToken: TestContext.Current.CancellationToken);

        Assert.False(second.TimedOut, $"the second server kept running on a busy port\n{second.Output}");
        Assert.Equal(1, second.ExitCode);
        Assert.Equal($"kit: cannot listen on {address}: address in use (another process listens there)", second.StandardError.Trim());
        Assert.DoesNotContain("serving", second.Output, StringComparison.Ordinal);
    }

    /// <summary>A port held by a .NET server that set ReuseAddress (as kit did) is busy too: kit no longer joins it.</summary>
    [Fact]
    public void DataServeOnAPortHeldWithReuseAddressExitsNonZero()
    {
        using var holder = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        holder.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        holder.Listen();
        string address = $"tcp://127.0.0.1:{((IPEndPoint)holder.LocalEndPoint!).Port}";

        ProcessResult result = ProcessRunner.Run(KitCli.ExecutablePath,
            ["data", "serve", "--git", Path.Combine(_dir.FullName, "store"), "--listen-9p", address], TimeSpan.FromSeconds(30));

        Assert.False(result.TimedOut, $"kit served on a busy port\n{result.Output}");
        Assert.Equal(1, result.ExitCode);
        Assert.Equal($"kit: cannot listen on {address}: address in use (another process listens there)", result.StandardError.Trim());
    }

    [Fact]
    public async Task SecondDataServeOnALiveUnixSocketExitsNonZero()
    {
        string socket = Path.Combine(_dir.FullName, "9p.sock");
        using RunningProcess first = KitCli.Start("data", "serve", "--git", Path.Combine(_dir.FullName, "a"), "--listen-9p", $"unix:{socket}");
        await first.WaitForLineAsync(l => l.Contains("serving", StringComparison.Ordinal), Startup, TestContext.Current.CancellationToken);

        ProcessResult second = await ProcessRunner.RunAsync(KitCli.ExecutablePath,
            ["data", "serve", "--git", Path.Combine(_dir.FullName, "b"), "--listen-9p", $"unix:{socket}"], TimeSpan.FromSeconds(30),
            cancellationToken: TestContext.Current.CancellationToken);

        Assert.False(second.TimedOut, second.Output);
        Assert.Equal(1, second.ExitCode);
        Assert.Equal($"kit: cannot listen on unix:{socket}: address in use: {socket} is a socket another process listens on", second.StandardError.Trim());
        // The first server still has its socket.
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await probe.ConnectAsync(new UnixDomainSocketEndPoint(socket), TestContext.Current.CancellationToken);
    }
}
