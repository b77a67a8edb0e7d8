using System.Net.Sockets;
using Kit.Linux;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.NineP.Tests;

/// <summary>
/// Security review finding 5: a Unix listener removes only a stale socket at its path and refuses anything else, so
/// `--listen-9p unix:FILE` can never delete a file; on close it removes only the socket it bound.
/// </summary>
public sealed class UnixListenerTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-unix-listener-");

    public void Dispose() => _dir.Delete(recursive: true);

    private string PathOf(string name) => Path.Combine(_dir.FullName, name);

    private static ListenAddress Unix(string path) =>
        ListenAddress.TryParse($"unix:{path}", out ListenAddress? a, out string error) ? a! : throw new ArgumentException(error);

    [Fact]
    public async Task A_regular_file_at_the_path_is_refused_and_kept()
    {
        string path = PathOf("precious");
        await File.WriteAllTextAsync(path, "keep me", TestContext.Current.CancellationToken);
        await using var server = new NinePServer(() => new MemoryFileSystem());

        IOException e = Assert.Throws<IOException>(() => server.Listen(Unix(path)));

        Assert.Contains("not a socket", e.Message, StringComparison.Ordinal);
        Assert.Equal("keep me", await File.ReadAllTextAsync(path, TestContext.Current.CancellationToken));
    }

    [Fact]
    public void A_directory_or_a_fifo_at_the_path_is_refused_without_opening_it()
    {
        string dir = PathOf("d");
        Directory.CreateDirectory(dir);
        string fifo = PathOf("fifo");
        ProcessResult made = ProcessRunner.Run("mkfifo", [fifo]);
        Assert.Equal(0, made.ExitCode);

        // A FIFO that anything opened for reading would block on: PrepareForBind must only lstat it.
        Assert.Throws<IOException>(() => UnixSocketFile.PrepareForBind(fifo));
        Assert.Throws<IOException>(() => UnixSocketFile.PrepareForBind(dir));
        Assert.True(Directory.Exists(dir));
        Assert.True(File.Exists(fifo));
    }

    [Fact]
    public async Task A_live_socket_is_refused_and_its_server_keeps_serving()
    {
        string path = PathOf("9p.sock");
        var fs = new MemoryFileSystem();
        fs.Root.Add(new MemoryFileSystem.MemFile("f") { Content = "first"u8.ToArray() });
        await using var first = new NinePServer(() => fs);
        first.Listen(Unix(path));
        await using var second = new NinePServer(() => new MemoryFileSystem());

        IOException e = Assert.Throws<IOException>(() => second.Listen(Unix(path)));

        Assert.Contains("in use", e.Message, StringComparison.Ordinal);
        await using NinePClient c = await NinePClient.ConnectAsync(Unix(path), Dialect.Linux, ct: TestContext.Current.CancellationToken);
        Assert.Equal("first", await c.ReadTextAsync("f"));
    }

    [Fact]
    public async Task A_stale_socket_is_replaced()
    {
        string path = PathOf("stale.sock");
        using (var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            dead.Bind(new UnixDomainSocketEndPoint(path)); // bound, never listening: connections are refused
        }
        var fs = new MemoryFileSystem();
        fs.Root.Add(new MemoryFileSystem.MemFile("f") { Content = "new"u8.ToArray() });
        await using var server = new NinePServer(() => fs);

        server.Listen(Unix(path));

        await using NinePClient c = await NinePClient.ConnectAsync(Unix(path), Dialect.Linux, ct: TestContext.Current.CancellationToken);
        Assert.Equal("new", await c.ReadTextAsync("f"));
    }

    [Fact]
    public async Task Closing_removes_the_own_socket_but_not_a_file_that_took_its_place()
    {
        string mine = PathOf("mine.sock"), replaced = PathOf("replaced.sock");
        var server = new NinePServer(() => new MemoryFileSystem());
        server.Listen(Unix(mine));
        server.Listen(Unix(replaced));
        File.Delete(replaced);
        await File.WriteAllTextAsync(replaced, "someone else's", TestContext.Current.CancellationToken);

        await server.DisposeAsync();

        Assert.False(File.Exists(mine));
        Assert.Equal("someone else's", await File.ReadAllTextAsync(replaced, TestContext.Current.CancellationToken));
    }
}
