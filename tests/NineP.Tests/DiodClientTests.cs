using System.Diagnostics;
using System.Net;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.NineP.Tests;

/// <summary>diod's own 9P2000.L clients (libnpclient), which nobody on this project wrote, against our server.</summary>
[Trait("Tier", "Real")]
public sealed class DiodClientTests : IAsyncLifetime
{
    private readonly MemoryFileSystem _fs = new();
    private NinePServer _server = null!;
    private int _port;

    public ValueTask InitializeAsync()
    {
        var sub = new MemoryFileSystem.MemDir("sub");
        sub.Add(new MemoryFileSystem.MemFile("inner") { Content = "inner text\n"u8.ToArray() });
        _fs.Root.Add(sub);
        byte[] big = new byte[3 * 1024 * 1024];
        new Random(7).NextBytes(big);
        _fs.Root.Add(new MemoryFileSystem.MemFile("big") { Content = big });
        _fs.Root.Add(new MemoryFileSystem.MemFile("hello") { Content = "hello world\n"u8.ToArray() });
        _server = new NinePServer(() => _fs);
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        _port = ((IPEndPoint)_server.Listen(any!)).Port;
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task DiodlsListsTheRootAndASubdirectory()
    {
        var (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodls", ["-s", $"127.0.0.1:{_port}", "-a", "/", "/"]);
        Assert.True(code == 0, stderr);
        string[] names = System.Text.Encoding.UTF8.GetString(stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Contains("hello", names);
        Assert.Contains("sub", names);
        Assert.Contains("big", names);
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodls", ["-s", $"127.0.0.1:{_port}", "-a", "/", "sub"]);
        Assert.True(code == 0, stderr);
        Assert.Equal("inner\n", System.Text.Encoding.UTF8.GetString(stdout));
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodls", ["-s", $"127.0.0.1:{_port}", "-a", "/", "-l", "/"]);
        Assert.True(code == 0, stderr);
        Assert.Matches("-rw-rw-r--.* 12 .*hello", System.Text.Encoding.UTF8.GetString(stdout));
    }

    [Fact]
    public async Task DiodcatReadsSmallAndLargeFiles()
    {
        var (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", $"127.0.0.1:{_port}", "-a", "/", "hello", "sub/inner"]);
        Assert.True(code == 0, stderr);
        Assert.Equal("hello world\ninner text\n", System.Text.Encoding.UTF8.GetString(stdout));
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", $"127.0.0.1:{_port}", "-a", "/", "-m", "1048576", "big"]);
        Assert.True(code == 0, stderr);
        Assert.Equal(((MemoryFileSystem.MemFile)(await _fs.Root.LookupAsync("big", default))!).Content, stdout);
    }

    [Fact]
    public async Task DiodcatOfAMissingFileFailsCleanly()
    {
        var (code, _, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", $"127.0.0.1:{_port}", "-a", "/", "missing"]);
        Assert.NotEqual(0, code);
        Assert.Contains("No such file", stderr, StringComparison.Ordinal);
    }
}
