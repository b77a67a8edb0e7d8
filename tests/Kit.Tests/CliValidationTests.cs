using Kit.Testing;

namespace Kit.Tests;

/// <summary>Issue 14 items 4 and 5: flags and files are checked before kit acts, and every problem is one line.</summary>
public sealed class CliValidationTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-validate-");

    public void Dispose() => _dir.Delete(recursive: true);

    /// <summary>All three problems, one line each, and nothing started: not the accelerator's probe, not QEMU.</summary>
    [Fact]
    public void VmRunReportsEveryBadFlagBeforeTheHost()
    {
        ProcessResult result = KitCli.Run("vm", "run", "--kernel", "/nonexistent", "--net", "bogus", "--cpus", "0");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal(
            [
                "kit: --kernel /nonexistent: no such file",
                "kit: --cpus must be 1 to 64, got 0",
                "kit: --net wants none, vpnkit, vmnet:PATH or tap:NAME (NAME up to 15 bytes), got 'bogus'",
            ],
            result.StandardError.Trim().Split('\n'));
        Assert.Equal("", result.StandardOutput);
    }

    [Fact]
    public void VmRunChecksFilesAndValuesTogether()
    {
        string dir = _dir.FullName;
        ProcessResult result = KitCli.Run("vm", "run", "--kernel", dir, "--initrd", Path.Combine(dir, "missing"), "--memory", "8G",
            "--disk", Path.Combine(dir, "disk.img") + ",ro", "--share", $"tag={Path.Combine(dir, "nodir")}", "--accel", "fast", "--mtu", "100");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal(
            [
                $"kit: --kernel {dir}: is a directory, not a file",
                $"kit: --initrd {Path.Combine(dir, "missing")}: no such file",
                "kit: --memory: 8G is out of range (16M to 3G, whole 4K pages)",
                "kit: --mtu must be between 576 and 65520, got 100",
                "kit: --accel wants auto, kvm or tcg, got \"fast\"",
                $"kit: --disk {Path.Combine(dir, "disk.img")}: no such file",
                $"kit: --share tag={Path.Combine(dir, "nodir")}: {Path.Combine(dir, "nodir")} is not a directory",
            ],
            result.StandardError.Trim().Split('\n'));
    }

    [Fact]
    public void DataServeRefusesAFileAsTheStore()
    {
        string file = Path.Combine(_dir.FullName, "passwd");
        File.WriteAllText(file, "root:x:0:0::/root:/bin/sh\n");

        ProcessResult result = KitCli.Run("data", "serve", "--git", file, "--listen-9p", "tcp://127.0.0.1:0");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal($"kit: --git: {file} is a file, not a git repository", result.StandardError.Trim());
        Assert.Equal("root:x:0:0::/root:/bin/sh\n", File.ReadAllText(file));
    }

    /// <summary>A bad default identity stops `kit data serve` before it creates the store or listens.</summary>
    [Fact]
    public void DataServeRefusesABadAuthorBeforeCreatingAnything()
    {
        string store = Path.Combine(_dir.FullName, "store");

        ProcessResult result = KitCli.Run("data", "serve", "--git", store, "--listen-9p", "tcp://127.0.0.1:0", "--author", "nobody");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal("kit: --author: expected \"Name <email>\"", result.StandardError.Trim());
        Assert.False(Directory.Exists(store));
    }

    /// <summary>A directory with things in it that is not a repository is left as it is: no `git init` inside.</summary>
    [Fact]
    public void DataServeRefusesANonEmptyDirectoryThatIsNotARepository()
    {
        string dir = Path.Combine(_dir.FullName, "home");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "notes.txt"), "mine");

        ProcessResult result = KitCli.Run("data", "serve", "--git", dir, "--listen-9p", "tcp://127.0.0.1:0");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal($"kit: --git: {dir} is a directory that is neither empty nor a git repository; refusing to create a store in it",
            result.StandardError.Trim());
        Assert.Equal(["notes.txt"], Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName));
    }

    /// <summary>Issue 16's limits: byte counts with K/M/G/T, and a bad one is refused before any store is made.</summary>
    [Fact]
    public void DataServeRefusesBadByteLimits()
    {
        string store = Path.Combine(_dir.FullName, "store");

        ProcessResult result = KitCli.Run("data", "serve", "--git", store, "--listen-9p", "tcp://127.0.0.1:0",
            "--max-transaction-bytes", "12X", "--max-connection-bytes", "1G", "--max-server-bytes", "99999999999T");

        Assert.Equal(1, result.ExitCode);
        Assert.Equal(
            [
                "kit: --max-transaction-bytes: expected a byte count such as 8G, got \"12X\"",
                "kit: --max-server-bytes: expected a byte count such as 8G, got \"99999999999T\"",
            ],
            result.StandardError.Trim().Split('\n'));
        Assert.False(Directory.Exists(store));
    }
}
