using System.Globalization;
using System.Text;
using Kit.DataKit.Client;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Data;

/// <summary>
/// Issue 14, "kit is not one file" and "Packaging": the published kit, copied alone into an empty chroot (the C library
/// and OpenSSL beside it, nothing of the build tree), serves DataKit and keeps a commit, libgit2 coming from inside kit
/// (src/Kit/NativeGit.cs); and the .deb of contrib/deb/build.sh installs into such a root with dpkg, after which its
/// /usr/bin/kit does the same. Each chroot runs in its own mount namespace, so its /proc and /dev go with it.
/// </summary>
public sealed class SingleBinaryTests : IDisposable
{
    private readonly DirectoryInfo _root = Directory.CreateTempSubdirectory("kit-chroot-");

    private string Root => _root.FullName;

    public void Dispose()
    {
        // /dev and /proc were mounted only inside the chroot's own mount namespace, gone with its processes; were one
        // still mounted here, a recursive delete would reach into the host's /dev. So they go first, and only if empty.
        foreach (string mountPoint in new[] { "dev", "proc" })
        {
            string path = Path.Combine(Root, mountPoint);
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
        string published = Published();
        MakeSystem();
        File.Copy(published, Path.Combine(Root, "kit"));
        Assert.Equal(["kit"], Directory.GetFiles(Root).Select(Path.GetFileName));

        await ServeACommitAsync("/kit");
    }

    [Fact]
    public async Task TheDebInstallsWithDpkgAndItsKitServesACommit()
    {
        string published = Published();
        MakeSystem();
        string debs = Path.Combine(Root, "..", Path.GetFileName(Root) + "-deb");
        try
        {
            ProcessResult build = ProcessRunner.Run("bash", [Path.Combine(RepoPaths.Root, "contrib", "deb", "build.sh"), published, debs]);
            Assert.True(build.ExitCode == 0, build.Output);
            string deb = build.StandardOutput.Trim();

            // dpkg's database in the new root; libc6 and libssl3 are there as files but not registered in it, hence
            // --force-depends (a Debian system has them registered and apt would resolve them).
            Directory.CreateDirectory(Path.Combine(Root, "var/lib/dpkg/info"));
            Directory.CreateDirectory(Path.Combine(Root, "var/lib/dpkg/updates"));
            File.WriteAllText(Path.Combine(Root, "var/lib/dpkg/status"), "");
            ProcessResult install = ProcessRunner.Run("dpkg", [$"--root={Root}", "--force-depends", "-i", deb]);
            Assert.True(install.ExitCode == 0, install.Output);
            ProcessResult status = ProcessRunner.Run("dpkg", [$"--root={Root}", "-s", "kit"]);
            Assert.Contains("Status: install ok installed", status.StandardOutput, StringComparison.Ordinal);
            Assert.Contains("Depends: libc6 (>= 2.36), libssl3", status.StandardOutput, StringComparison.Ordinal);
            foreach (string file in new[] { "usr/lib/kit/kit-agent", "usr/share/man/man1/kit.1.gz", "usr/share/bash-completion/completions/kit",
                         "usr/share/fish/vendor_completions.d/kit.fish", "usr/lib/systemd/user/kit-data.service" })
            {
                Assert.True(File.Exists(Path.Combine(Root, file)), $"the package did not install /{file}");
            }
        }
        finally
        {
            if (Directory.Exists(debs))
            {
                Directory.Delete(debs, recursive: true);
            }
        }
        ProcessResult version = await InRootAsync("/usr/bin/kit --version");
        Assert.Equal(ProcessRunner.Run(Published(), ["--version"]).StandardOutput, version.StandardOutput);

        await ServeACommitAsync("/usr/bin/kit");
    }

    /// <summary>
    /// `apt install ./kit_*.deb` on a fresh Debian 12: a root made by mmdebstrap (variant apt: dpkg and apt, nothing else,
    /// plus libssl3, the one dependency such a root lacks; the packages come from the mirror apt is configured with, as
    /// the machine image's do), then apt installs the package with nothing left to download, and its kit runs there.
    /// </summary>
    [Fact]
    public async Task TheDebInstallsWithAptOnAFreshDebian()
    {
        string published = Published();
        string debian = Path.Combine(Root, "debian");
        ProcessResult strap = await ProcessRunner.RunAsync("mmdebstrap",
            ["--variant=apt", "--include=libssl3", "--mode=root", "--format=directory", "--quiet", "bookworm", debian], TimeSpan.FromMinutes(15),
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(strap.ExitCode == 0, strap.Output);
        ProcessResult build = ProcessRunner.Run("bash", [Path.Combine(RepoPaths.Root, "contrib", "deb", "build.sh"), published, Path.Combine(debian, "tmp")]);
        Assert.True(build.ExitCode == 0, build.Output);
        string deb = "/tmp/" + Path.GetFileName(build.StandardOutput.Trim());
        // apt wants /proc and a pty for its log: both mounted in a mount namespace of the install's own.
        ProcessResult install = await ProcessRunner.RunAsync("unshare", ["--mount", "--fork", "sh", "-c",
            $"mount -t proc proc {debian}/proc && mount -t devpts -o newinstance devpts {debian}/dev/pts && chroot {debian} apt-get install -y {deb}"],
            TimeSpan.FromMinutes(5), cancellationToken: TestContext.Current.CancellationToken);
        Assert.True(install.ExitCode == 0, install.Output);
        Assert.Contains("Setting up kit (", install.StandardOutput, StringComparison.Ordinal);
        ProcessResult version = await ProcessRunner.RunAsync("chroot", [debian, "kit", "--version"], TimeSpan.FromSeconds(60),
            cancellationToken: TestContext.Current.CancellationToken);
        Assert.Equal(ProcessRunner.Run(published, ["--version"]).StandardOutput, version.StandardOutput);
        Assert.True(File.Exists(Path.Combine(debian, "usr/lib/kit/kit-agent")), "the package did not install the guest agent");
    }

    private static string Published()
    {
        // ./test publishes kit and sets KIT_EXE; a run without it uses the last `./kit` build.
        string published = Environment.GetEnvironmentVariable("KIT_EXE") is { Length: > 0 } exe ? exe : Path.Combine(RepoPaths.Root, "artifacts", "kit", "kit");
        Assert.True(File.Exists(published), $"{published}: no published kit (./kit --version builds it; ./test does)");
        Assert.False(File.Exists(Path.Combine(Path.GetDirectoryName(published)!, "kit.dll")), "KIT_EXE is not the NativeAOT single file");
        return published;
    }

    /// <summary>
    /// Only what kit declares it needs of a system: the C library (libc6: libc, libm, libdl, libpthread, the loader)
    /// and OpenSSL (libssl3, which libgit2 hashes with), and mount points for /proc and /dev.
    /// </summary>
    private void MakeSystem()
    {
        foreach (string package in new[] { "libc6", "libssl3" })
        {
            ProcessResult files = ProcessRunner.Run("dpkg", ["-L", package]);
            Assert.True(files.ExitCode == 0, files.Output);
            foreach (string lib in files.StandardOutput.Split('\n').Where(l => l.Contains(".so", StringComparison.Ordinal) && File.Exists(l)))
            {
                string to = Root + lib;
                Directory.CreateDirectory(Path.GetDirectoryName(to)!);
                File.Copy(lib, to, overwrite: true);
            }
        }
        Directory.CreateDirectory(Path.Combine(Root, "proc"));
        Directory.CreateDirectory(Path.Combine(Root, "dev"));
        Directory.CreateDirectory(Path.Combine(Root, "tmp"));
    }

    private string InRoot(string command) =>
        $"mount --make-rprivate / && mount -t proc proc '{Root}/proc' && mount --rbind /dev '{Root}/dev' && exec chroot '{Root}' {command}";

    private static readonly Dictionary<string, string?> RootEnvironment = new() { ["HOME"] = "/", ["TMPDIR"] = "/tmp" };

    private Task<ProcessResult> InRootAsync(string command) =>
        ProcessRunner.RunAsync("unshare", ["--mount", "--fork", "sh", "-c", InRoot(command)], TimeSpan.FromSeconds(60),
            environment: RootEnvironment, cancellationToken: TestContext.Current.CancellationToken);

    /// <summary>`KIT data serve` in the chroot on a loopback port; one commit through the DataKit client; git sees it.</summary>
    private async Task ServeACommitAsync(string kit)
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        int port = LoopbackPort.Free();
        using RunningProcess serve = ProcessRunner.Start("unshare", ["--mount", "--fork", "sh", "-c",
            InRoot($"{kit} data serve --git /store --listen-9p tcp://127.0.0.1:{port.ToString(CultureInfo.InvariantCulture)}")],
            environment: RootEnvironment);
        ProcessResult? served = null;
        try
        {
            await serve.WaitForLineAsync(l => l.Contains("serving", StringComparison.Ordinal), TimeSpan.FromSeconds(60), cancel);
            ListenAddress.TryParse($"tcp://127.0.0.1:{port}", out ListenAddress? address, out _);
            await using DataKitClient client = await DataKitClient.ConnectAsync(address!, cancel);
            Branch branch = await client.BranchAsync("master", cancel);
            await using Transaction t = await branch.TransactionAsync(cancel);
            await t.CreateOrReplaceFileAsync("hello", Encoding.UTF8.GetBytes("from a lone kit\n"), cancel);
            await t.CommitAsync("one file", cancel);
        }
        finally
        {
            serve.Process.Kill(entireProcessTree: true);
            served = await serve.WaitAsync(TimeSpan.FromSeconds(10), cancel);
        }
        ProcessResult show = ProcessRunner.Run("git", ["-C", Path.Combine(Root, "store"), "show", "master:hello"]);
        Assert.True(show.ExitCode == 0, show.Output + served?.Output);
        Assert.Equal("from a lone kit\n", show.StandardOutput);
        Assert.DoesNotContain("   at ", served?.Output ?? "", StringComparison.Ordinal);
    }
}
