using System.Net.Sockets;
using System.Text;
using Kit.Agent.Protocol;

namespace Kit.Agent.Tests;

/// <summary>ForwardUnix against the real agent and a Unix echo server the test runs.</summary>
public sealed class ForwardTests(AgentFixture fixture)
{
    [Fact]
    public async Task Bytes_flow_both_ways_and_half_close_reaches_the_guest_socket()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-agent-echo-");
        try
        {
            string path = Path.Combine(dir.FullName, "echo.sock");
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(path));
            listener.Listen(1);
            Task echo = EchoOnceAsync(listener, timeout.Token);

            Socket socket = await fixture.Agent.ConnectRawAsync(timeout.Token);
            AgentClient client = await AgentClient.ConnectAsync(new NetworkStream(socket, ownsSocket: true), timeout.Token);
            await using Stream stream = await client.ForwardUnixAsync(path, timeout.Token);
            await client.DisposeAsync(); // the stream is the caller's now and stays open

            byte[] message = Encoding.ASCII.GetBytes(string.Concat(Enumerable.Repeat("hello through the agent ", 5000)));
            await stream.WriteAsync(message, timeout.Token);
            socket.Shutdown(SocketShutdown.Send);
            var received = new MemoryStream();
            await stream.CopyToAsync(received, timeout.Token); // ends when the echo server half-closes after our EOF
            Assert.Equal(message, received.ToArray());
            await echo;
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task A_missing_guest_socket_is_an_error()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await using AgentClient client = await fixture.Agent.ConnectAsync(timeout.Token);
        var e = await Assert.ThrowsAsync<IOException>(() => client.ForwardUnixAsync("/nonexistent/kit.sock", timeout.Token));
        Assert.Contains("/nonexistent/kit.sock", e.Message, StringComparison.Ordinal);
    }

    private static async Task EchoOnceAsync(Socket listener, CancellationToken ct)
    {
        using Socket peer = await listener.AcceptAsync(ct);
        byte[] buffer = new byte[8192];
        while (true)
        {
            int n = await peer.ReceiveAsync(buffer, SocketFlags.None, ct);
            if (n == 0)
            {
                break;
            }
            await peer.SendAsync(buffer.AsMemory(0, n), SocketFlags.None, ct);
        }
        peer.Shutdown(SocketShutdown.Send);
    }
}
