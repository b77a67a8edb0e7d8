using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Kit.DataKit.Client;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Data;

/// <summary>
/// Issue 14, "kit is not one file": the published kit, copied alone into an empty chroot (its C libraries and /proc
/// and OpenSSL beside it, nothing of the build tree), serves DataKit and keeps a commit; libgit2 comes from inside kit
/// (src/Kit/NativeGit.cs). The chroot runs in its own mount namespace, so its /proc goes with it.
/// </summary>
public sealed class SingleBinaryTests : IDisposable
{
    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("kit-chroot-");

    public void Dispose()
    {
        // /dev and /proc were mounted only inside the chroot's own mount namespace, gone with its processes; were one
        // still mounted here, a recursive delete would reach into the host's /dev. So they go first, and only if empty.
        foreach (string mountPoint in new[] { "dev", "proc" })
        {
            string path = Path.Combine(_root.FullName, mountPoint);
            if (Directory.Exists(path))
            {
                Directory.Delete(path, recursive: false);
            }
        }
        _root.Delete(recursive: true);
    }

    [Fact]
    public async Task ThePublishedKitCopiedAloneIntoAChrootServesACommit()
    {
        string published = Environment.GetEnvironmentVariable("KIT_EXE") ?? "";
        if (published.Length == 0)
        {
            Assert.Skip("needs the published kit in KIT_EXE (./test publishes it and sets KIT_EXE)");
        }
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string root = _root.FullName;
        File.Copy(published, Path.Combine(root, "kit"));
        Assert.False(File.Exists(Path.Combine(Path.GetDirectoryName(published)!, "kit.deps.json")), "KIT_EXE is not a published single binary");
        // Only what kit declares it needs of a system: the C library (libc6: libc, libm, libdl, libpthread, the loader)
        // and OpenSSL (libssl3, which libgit2 hashes with), with /proc and /dev; nothing of the build tree.
        foreach (string package in new[] { "libc6", "libssl3" })
        {
            ProcessResult files = ProcessRunner.Run("dpkg", ["-L", package]);
            Assert.True(files.ExitCode == 0, files.Output);
            foreach (string lib in files.StandardOutput.Split('\n').Where(l => l.Contains(".so", StringComparison.Ordinal) && File.Exists(l)))
            {
                string to = root + lib;
                Directory.CreateDirectory(Path.GetDirectoryName(to)!);
                File.Copy(lib, to, overwrite: true);
            }
        }
        Directory.CreateDirectory(Path.Combine(root, "proc"));
        Directory.CreateDirectory(Path.Combine(root, "dev"));
        Directory.CreateDirectory(Path.Combine(root, "tmp"));
        Assert.Equal(["kit"], Directory.GetFiles(root).Select(Path.GetFileName));

        int port = FreePort();
        using RunningProcess kit = ProcessRunner.Start("unshare", ["--mount", "--fork", "sh", "-c",
            $"mount --make-rprivate / && mount -t proc proc '{root}/proc' && mount --rbind /dev '{root}/dev' && exec chroot '{root}' /kit data serve --git /store --listen-9p tcp://127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}"],
            environment: new Dictionary<string, string?> { ["HOME"] = "/", ["TMPDIR"] = "/tmp" });
        ProcessResult? served = null;
        try
        {
            await kit.WaitForLineAsync(l => l.Contains("serving", StringComparison.Ordinal), TimeSpan.FromSeconds(60), cancel);
            ListenAddress.TryParse($"tcp://127.0.0.1:{port}", out ListenAddress? address, out _);
            await using (DataKitClient client = await DataKitClient.ConnectAsync(address!, cancel))
            {
                Branch branch = await client.BranchAsync("master", cancel);
                await using Transaction t = await branch.TransactionAsync(cancel);
                await t.CreateOrReplaceFileAsync("hello", Encoding.UTF8.GetBytes("from a lone kit\n"), cancel);
                await t.CommitAsync("one file", cancel);
            }
        }
        finally
        {
            kit.Process.Kill(entireProcessTree: true);
            served = await kit.WaitAsync(TimeSpan.FromSeconds(10), cancel);
        }
        ProcessResult show = ProcessRunner.Run("git", ["-C", Path.Combine(root, "store"), "show", "master:hello"]);
        Assert.True(show.ExitCode == 0, show.Output + served?.Output);
        Assert.Equal("from a lone kit\n", show.StandardOutput);
        Assert.DoesNotContain("   at ", served?.Output ?? "", StringComparison.Ordinal);
    }

    private static int FreePort()
    {
        using var probe = new TcpListener(IPAddress.Loopback, 0);
        probe.Start();
        return ((IPEndPoint)probe.LocalEndpoint).Port;
    }
}
