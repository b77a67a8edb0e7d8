using System.Text;
using Kit.HyperKit.HostFs;
using Kit.Testing;

namespace Kit.HyperKit.Tests;

/// <summary>
/// Clients nobody on this project wrote against the built-in host-directory server, without KVM: diod's
/// libnpclient tools, and the Linux kernel's v9fs in a QEMU TCG guest mounting it over trans=tcp (the same server
/// code the virtio-9p device runs in process).
/// </summary>
[Trait("Tier", "Real")]
public sealed class HostFsRealClientTests : IAsyncLifetime
{
    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("kit-hostfs-real-");
    private HostFsTcpServer _server = null!;

    public ValueTask InitializeAsync()
    {
        File.WriteAllText(Path.Combine(_root.FullName, "hello"), "hello world\n");
        Directory.CreateDirectory(Path.Combine(_root.FullName, "sub"));
        File.WriteAllText(Path.Combine(_root.FullName, "sub", "inner"), "inner text\n");
        byte[] big = new byte[3 * 1024 * 1024];
        new Random(7).NextBytes(big);
        File.WriteAllBytes(Path.Combine(_root.FullName, "big"), big);
        _server = new HostFsTcpServer(new HostFsOptions(_root.FullName));
        return ValueTask.CompletedTask;
    }

    public async ValueTask DisposeAsync()
    {
        await _server.DisposeAsync();
        _root.Delete(recursive: true);
    }

    [Fact]
    public async Task Diod_clients_list_and_read_the_host_directory()
    {
        string server = $"127.0.0.1:{_server.Port}";
        var (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodls", ["-s", server, "-a", "/", "-l", "/"]);
        Assert.True(code == 0, stderr);
        string listing = Encoding.UTF8.GetString(stdout);
        Assert.True(listing.Contains("hello", StringComparison.Ordinal), $"stdout: {listing}\nstderr: {stderr}");
        Assert.Matches(" 12 .*hello", listing);
        Assert.Contains("sub", listing, StringComparison.Ordinal);
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", server, "-a", "/", "hello", "sub/inner"]);
        Assert.True(code == 0, stderr);
        Assert.Equal("hello world\ninner text\n", Encoding.UTF8.GetString(stdout));
        (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("diodcat", ["-s", server, "-a", "/", "-m", "1048576", "big"]);
        Assert.True(code == 0, stderr);
        Assert.Equal(File.ReadAllBytes(Path.Combine(_root.FullName, "big")), stdout);
    }

    [Fact]
    public async Task Linux_mounts_the_host_directory_over_tcp_and_changes_it()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        // A host name that is not UTF-8 (finding 10): the kernel must list, read, rename and remove it by its bytes.
        ProcessRunner.Run("sh", ["-c", @"printf host-odd > ""$1/sub/$(printf 'h\377o')""", "sh", _root.FullName]).EnsureSuccess();
        string script = $"""
            set -e
            ip link set eth0 up
            ip addr add 10.0.2.15/24 dev eth0
            modprobe 9pnet_fd
            mkdir -p /mnt/h
            mount -t 9p -o trans=tcp,port={_server.Port},version=9p2000.L,msize=262144 10.0.2.2 /mnt/h
            echo "ls=$(ls /mnt/h | tr '\n' ' ')"
            echo "inner=$(cat /mnt/h/sub/inner)"
            odd="$(printf 'h\377o')"; new="$(printf 'g\376o')"
            echo "odd-count=$(ls /mnt/h/sub | wc -l)"
            echo "odd-cat=$(cat "/mnt/h/sub/$odd")"
            mv "/mnt/h/sub/$odd" "/mnt/h/sub/$new"
            [ -e "/mnt/h/sub/$new" ] && [ ! -e "/mnt/h/sub/$odd" ] && echo odd-renamed=yes
            rm "/mnt/h/sub/$new" && echo "odd-left=$(ls /mnt/h/sub | wc -l)"
            echo from-the-kernel > /mnt/h/written
            mkdir /mnt/h/d
            echo a > /mnt/h/d/a
            mv /mnt/h/d/a /mnt/h/d/b
            ln -s b /mnt/h/d/l
            ln /mnt/h/d/b /mnt/h/d/hard
            echo "via-link=$(cat /mnt/h/d/l)"
            chmod 751 /mnt/h/written
            echo "mode=$(stat -c %a /mnt/h/written)"
            touch -d @1000000000 /mnt/h/d/b
            echo suid > /mnt/h/suid
            chown 1234:1234 /mnt/h/suid && echo chown=ok
            chmod 6755 /mnt/h/suid && echo chmod-setid=ok
            if mknod /mnt/h/dev c 1 5 2>/dev/null; then echo mknod-dev=allowed; else echo mknod-dev=refused; fi
            dd if=/dev/urandom of=/tmp/r bs=64k count=64 2>/dev/null
            cp /tmp/r /mnt/h/copy
            echo "sum-same=$([ "$(md5sum < /tmp/r)" = "$(md5sum < /mnt/h/copy)" ] && echo yes)"
            echo "big-size=$(wc -c < /mnt/h/big)"
            rm /mnt/h/copy
            mkdir /mnt/h/gone && rmdir /mnt/h/gone
            if rmdir /mnt/h/d 2>/dev/null; then echo rmdir-nonempty=allowed; else echo rmdir-nonempty=refused; fi
            df /mnt/h | tail -n 1 | sed 's/^/df: /'
            cd /
            umount /mnt/h
            """;
        var options = new QemuGuestOptions { Timeout = TimeSpan.FromMinutes(3) };
        options.AddNetwork(QemuNetwork.User("restrict=off"));
        await using QemuGuest guest = await QemuGuest.StartAsync(script, options, cancel);
        GuestResult result = await guest.WaitForExitAsync(cancel);
        Assert.True(result.ExitCode == 0, $"guest script failed (exit {result.ExitCode})\n{result.Serial}");
        Assert.Contains("ls=big hello sub", result.Output, StringComparison.Ordinal);
        Assert.Contains("inner=inner text", result.Output, StringComparison.Ordinal);
        Assert.Contains("odd-count=2", result.Output, StringComparison.Ordinal);
        Assert.Contains("odd-cat=host-odd", result.Output, StringComparison.Ordinal);
        Assert.Contains("odd-renamed=yes", result.Output, StringComparison.Ordinal);
        Assert.Contains("odd-left=1", result.Output, StringComparison.Ordinal);
        Assert.Contains("via-link=a", result.Output, StringComparison.Ordinal);
        Assert.Contains("mode=751", result.Output, StringComparison.Ordinal);
        Assert.Contains("sum-same=yes", result.Output, StringComparison.Ordinal);
        Assert.Contains("big-size=3145728", result.Output, StringComparison.Ordinal);
        Assert.Contains("rmdir-nonempty=refused", result.Output, StringComparison.Ordinal);
        Assert.Contains("df: ", result.Output, StringComparison.Ordinal);
        // An untrusted share (the default): the kernel's chown and chmod succeed, yet the host file keeps the owner kit
        // runs as and no set-id bit (docs/security.md).
        Assert.Contains("chown=ok", result.Output, StringComparison.Ordinal);
        Assert.Contains("chmod-setid=ok", result.Output, StringComparison.Ordinal);
        Assert.Contains("mknod-dev=refused", result.Output, StringComparison.Ordinal);

        string root = _root.FullName;
        Assert.Equal("from-the-kernel\n", File.ReadAllText(Path.Combine(root, "written")));
        Assert.Equal("a\n", File.ReadAllText(Path.Combine(root, "d", "b")));
        Assert.Equal("a\n", File.ReadAllText(Path.Combine(root, "d", "hard")));
        Assert.Equal("b", new FileInfo(Path.Combine(root, "d", "l")).LinkTarget);
        Assert.False(File.Exists(Path.Combine(root, "d", "a")));
        Assert.False(File.Exists(Path.Combine(root, "copy")));
        Assert.False(Directory.Exists(Path.Combine(root, "gone")));
        Assert.Equal(DateTimeOffset.FromUnixTimeSeconds(1_000_000_000).UtcDateTime, File.GetLastWriteTimeUtc(Path.Combine(root, "d", "b")));
        string stat = ProcessRunner.Run("stat", ["-c", "%a %u:%g", Path.Combine(root, "suid")]).EnsureSuccess().StandardOutput.Trim();
        Assert.Equal("755 " + ProcessRunner.Run("stat", ["-c", "%u:%g", root]).EnsureSuccess().StandardOutput.Trim(), stat);
        Assert.False(File.Exists(Path.Combine(root, "dev")));
    }
}
