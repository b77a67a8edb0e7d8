using System.Net.Sockets;
using System.Text;
using Kit.Cli.Machines;

namespace Kit.Tests;

/// <summary>
/// A machine daemon's control socket against bad input: a line that is not JSON, a request without an op, an overlong
/// line and a client that says nothing each get an error answer or a closed connection, and the next good request is
/// answered as usual.
/// </summary>
public sealed class ControlServerTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-control-");
    private readonly ControlServer _server;
    private int _handled;

    public ControlServerTests()
    {
        _server = new ControlServer(Path, request =>
        {
            Interlocked.Increment(ref _handled);
            return Task.FromResult(request.Op == "status" ? new ControlReply(true) : new ControlReply(false, $"unknown request \"{request.Op}\""));
        });
    }

    private string Path => System.IO.Path.Combine(_dir.FullName, "control.sock");

    public void Dispose()
    {
        _server.Dispose();
        _dir.Delete(recursive: true);
    }

    [Fact]
    public void The_socket_is_private()
    {
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path));
    }

    [Theory]
    [InlineData("not json at all\n")]
    [InlineData("{\"op\": 42}\n")]
    [InlineData("[1,2,3]\n")]
    [InlineData("\n")]
    public async Task A_bad_line_gets_an_error_and_the_next_request_is_answered(string line)
    {
        string reply = await SendAsync(Encoding.UTF8.GetBytes(line));
        Assert.Contains("\"ok\":false", reply, StringComparison.Ordinal);
        Assert.Contains("\"ok\":true", await SendAsync("{\"op\":\"status\"}\n"u8.ToArray()), StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_overlong_line_is_refused_without_reading_it_all()
    {
        byte[] huge = new byte[3 << 20];
        huge.AsSpan().Fill((byte)'x');
        string reply = await SendAsync(huge, tolerateReset: true);
        Assert.True(reply.Length == 0 || reply.Contains("\"ok\":false", StringComparison.Ordinal), reply);
        Assert.Equal(0, _handled);
        Assert.Contains("\"ok\":true", await SendAsync("{\"op\":\"status\"}\n"u8.ToArray()), StringComparison.Ordinal);
    }

    private async Task<string> SendAsync(byte[] request, bool tolerateReset = false)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(Path), TestContext.Current.CancellationToken);
        using var stream = new NetworkStream(socket, ownsSocket: false);
        try
        {
            await stream.WriteAsync(request, TestContext.Current.CancellationToken);
            socket.Shutdown(SocketShutdown.Send);
            using var reader = new StreamReader(stream);
            return await reader.ReadToEndAsync(TestContext.Current.CancellationToken);
        }
        catch (IOException) when (tolerateReset)
        {
            return "";
        }
    }
}
