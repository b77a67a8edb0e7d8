using System.Text;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Data;

/// <summary>
/// Issue 16, items 5 and 6: the kit binary's `kit data ls|cat|write|commit|watch` scripted against `kit data serve` on
/// a loopback port, each result checked with the git CLI on the store (git log, git cat-file, git ls-tree): binary
/// content byte for byte, commit metadata from flags and from the server's defaults, clear one-line errors with exit
/// code 1 for a missing branch or path, and a watch that sees a commit made by another client.
/// </summary>
[Trait("Tier", "Real")]
public sealed class DataClientCommandTests : IAsyncLifetime
{
    // A private 0700 directory (mkdtemp) for the store and the test's input files.
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-data-client-");
    private RunningProcess? _server;
    private string _url = "";

    private string Store => Path.Combine(_dir.FullName, "store");

    private string Socket => Path.Combine(_dir.FullName, "dk.sock");

    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    public async ValueTask InitializeAsync()
    {
        // Port 0: the kernel picks a free port, and serve prints the address as bound.
        // Also a Unix socket in the private directory, for --url unix:PATH.
        _server = KitCli.Start("data", "serve", "--git", Store, "--listen-9p", "tcp://127.0.0.1:0", "--listen-9p", $"unix:{Socket}",
            "--author", "Ops Team <ops@example.com>");
        string line = await _server.WaitForLineAsync(l => l.Contains(" on tcp://127.0.0.1:", StringComparison.Ordinal), TimeSpan.FromSeconds(30), Cancel);
        _url = line[(line.IndexOf(" on ", StringComparison.Ordinal) + 4)..].Split(", ")[0].Trim();
    }

    public ValueTask DisposeAsync()
    {
        _server?.Dispose();
        _dir.Delete(recursive: true);
        return ValueTask.CompletedTask;
    }

    private Task<ProcessResult> Kit(string[] args, string? stdin = null) =>
        ProcessRunner.RunAsync(KitCli.ExecutablePath, ["data", .. args, "--url", _url], TimeSpan.FromSeconds(60), stdin, cancellationToken: Cancel);

    private async Task<string> Git(params string[] args)
    {
        ProcessResult r = await ProcessRunner.RunAsync("git", ["-C", Store, .. args], TimeSpan.FromSeconds(30), cancellationToken: Cancel);
        Assert.True(r.ExitCode == 0, r.Output);
        return r.StandardOutput;
    }

    private async Task<byte[]> GitBytes(params string[] args)
    {
        (int code, byte[] stdout, string stderr) = await ProcessRunner.RunBinaryAsync("git", ["-C", Store, .. args]);
        Assert.True(code == 0, stderr);
        return stdout;
    }

    private string Input(string name, byte[] content, bool executable = false)
    {
        string path = Path.Combine(_dir.FullName, name);
        File.WriteAllBytes(path, content);
        File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | (executable ? UnixFileMode.UserExecute : 0));
        return path;
    }

    private static void Succeeded(ProcessResult r) => Assert.True(r.ExitCode == 0 && !r.TimedOut, r.Output);

    /// <summary>A failure is one "kit: ..." line on stderr, exit code 1, nothing on stdout, no stack trace.</summary>
    private static void FailedWith(ProcessResult r, string message)
    {
        Assert.True(r.ExitCode == 1, r.Output);
        Assert.Equal("", r.StandardOutput);
        Assert.Equal($"kit: {message}", r.StandardError.Trim());
    }

    [Fact]
    public async Task Write_commit_cat_and_ls_round_trip_through_git()
    {
        // 3 MiB of every byte value (several 1 MiB msize chunks each way), written from a file.
        byte[] binary = new byte[3 * 1024 * 1024 + 17];
        new Random(16).NextBytes(binary);
        for (int i = 0; i < 256; i++)
        {
            binary[i] = (byte)i;
        }
        ProcessResult write = await Kit(["write", "master:data/blob.bin", Input("blob.bin", binary)]);
        Succeeded(write);
        Assert.Equal((await Git("rev-parse", "master")).Trim(), write.StandardOutput.Trim());
        Assert.Equal(binary, await GitBytes("cat-file", "blob", "master:data/blob.bin"));
        Assert.Equal("kit data write data/blob.bin|Ops Team|ops@example.com|Ops Team|ops@example.com",
            (await Git("log", "-1", "--format=%s|%an|%ae|%cn|%ce", "master")).Trim());

        // From standard input, with a message, an executable bit and metadata.
        Succeeded(await Kit(["write", "master:bin/tool.sh", "-m", "a tool", "-x", "--author", "Ada <ada@example.com>", "--date", "1234567890 +0200"], "#!/bin/sh\necho hi\n"));
        Assert.Equal("#!/bin/sh\necho hi\n", await Git("cat-file", "blob", "master:bin/tool.sh"));
        Assert.Equal("a tool|Ada|ada@example.com|2009-02-14T01:31:30+02:00|Ops Team",
            (await Git("log", "-1", "--format=%s|%an|%ae|%aI|%cn", "master")).Trim());

        // cat gives the bytes back unchanged.
        (int code, byte[] catted, string err) = await ProcessRunner.RunBinaryAsync(KitCli.ExecutablePath, ["data", "cat", "master:data/blob.bin", "--url", _url]);
        Assert.True(code == 0, err);
        Assert.Equal(binary, catted);

        // Several changes in one commit: a delete, a file whose x bit is taken from the local file (as git add does),
        // a new nested path, and the committer and date from flags.
        string before = (await Git("rev-parse", "master")).Trim();
        ProcessResult commit = await Kit(["commit", "master", "-m", "several", "--delete", "data",
            "--set", "etc/app/config.json=" + Input("config.json", "{\"x\":1}\n"u8.ToArray()),
            "--set", "run=" + Input("run", "#!/bin/sh\n"u8.ToArray(), executable: true),
            "--committer", "CI <ci@example.com>", "--date", "2026-12-07T12:00:00+01:00"]);
        Succeeded(commit);
        string head = commit.StandardOutput.Trim();
        Assert.Equal((await Git("rev-parse", "master")).Trim(), head);
        Assert.Equal(before, (await Git("rev-parse", "master^")).Trim());
        Assert.Equal("several|Ops Team|2026-12-07T12:00:00+01:00|CI|ci@example.com",
            (await Git("log", "-1", "--format=%s|%an|%aI|%cn|%ce", "master")).Trim());
        Assert.Equal(
            "100755 blob bin/tool.sh\n100644 blob etc/app/config.json\n100755 blob run\n",
            string.Concat((await Git("ls-tree", "-r", "master")).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(l => l.Split('\t') is [string meta, string name] ? $"{meta.Split(' ')[0]} {meta.Split(' ')[1]} {name}\n" : "")));
        Assert.Equal("{\"x\":1}\n", await Git("cat-file", "blob", "master:etc/app/config.json"));

        // ls: names (directories with '/'), and git ls-tree -l's columns; a file lists as itself.
        ProcessResult ls = await Kit(["ls", "master"]);
        Succeeded(ls);
        Assert.Equal("bin/\netc/\nrun\n", ls.StandardOutput);
        ProcessResult lsLong = await Kit(["ls", "-l", "master:bin"]);
        Succeeded(lsLong);
        Assert.Equal($"100755 blob {18,8}\ttool.sh\n", lsLong.StandardOutput);
        ProcessResult lsFile = await Kit(["ls", "master:etc/app/config.json"]);
        Succeeded(lsFile);
        Assert.Equal("etc/app/config.json\n", lsFile.StandardOutput);
        ProcessResult cat = await Kit(["cat", "master:etc/app/config.json"]);
        Succeeded(cat);
        Assert.Equal("{\"x\":1}\n", cat.StandardOutput);

        ProcessResult fsck = await ProcessRunner.RunAsync("git", ["-C", Store, "fsck", "--strict"], TimeSpan.FromSeconds(60), cancellationToken: Cancel);
        Assert.True(fsck.ExitCode == 0, fsck.Output);
    }

    [Fact]
    public async Task A_missing_branch_or_path_and_bad_input_fail_with_one_line_and_exit_1()
    {
        Succeeded(await Kit(["write", "master:a/file", "-m", "one"], "content\n"));
        string head = (await Git("rev-parse", "master")).Trim();

        FailedWith(await Kit(["cat", "nobranch:x"]), "branch nobranch does not exist");
        FailedWith(await Kit(["ls", "nobranch"]), "branch nobranch does not exist");
        FailedWith(await Kit(["cat", "master:missing"]), "master:missing: no such file or directory");
        FailedWith(await Kit(["ls", "master:a/missing"]), "master:a/missing: no such file or directory");
        FailedWith(await Kit(["cat", "master:a"]), "master:a: is a directory (use kit data ls)");
        FailedWith(await Kit(["cat", "master"]), "master: expected BRANCH:PATH");
        FailedWith(await Kit(["cat", "bad..name:x"]), "Invalid branch name \"bad..name\": it contains \"..\"");
        FailedWith(await Kit(["cat", "feature/x:f"]), "branch feature/x: names with '/' cannot be reached over 9P yet (branch/ holds one path component per branch)");
        FailedWith(await Kit(["ls", "master:../x"]), "master:../x: a path may not contain '.' or '..' components");
        FailedWith(await Kit(["commit", "master", "-m", "m", "--delete", "nothere"]), "master:nothere: no such file or directory");
        FailedWith(await Kit(["write", "master:a/file/below"], "x"), "master:a/file/below: \"file\" is not a directory");
        FailedWith(await Kit(["write", "master:a", "-m", "m"], "x"), "master:a: is a directory (--delete it first to replace it)");
        FailedWith(await Kit(["write", "master:b", "--author", "nobody"], "x"), "--author: expected \"Name <email>\"");
        FailedWith(await Kit(["write", "master:b", "--date", "2026-13-01T00:00:00Z"], "x"), "--date: \"2026-13-01T00:00:00Z\" is not a real date and time");
        FailedWith(await Kit(["write", "master:b", Path.Combine(_dir.FullName, "absent")]), $"{Path.Combine(_dir.FullName, "absent")}: no such file");
        FailedWith(await Kit(["commit", "master", "-m", "m", "--set", "novalue"]), "--set novalue: expected PATH=FILE");
        FailedWith(await Kit(["watch", "master", "--count", "0"]), "--count: must be 1 or more");
        // None of the refused commands moved the branch.
        Assert.Equal(head, (await Git("rev-parse", "master")).Trim());

        ProcessResult closed = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["data", "ls", "master", "--url", "tcp://127.0.0.1:1"], TimeSpan.FromSeconds(30), cancellationToken: Cancel);
        FailedWith(closed, "cannot connect to DataKit at tcp://127.0.0.1:1: Connection refused (is `kit data serve` running there?)");
        ProcessResult badUrl = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["data", "ls", "master", "--url", "http://x"], TimeSpan.FromSeconds(30), cancellationToken: Cancel);
        FailedWith(badUrl, "--url: 'http://x' is not tcp://HOST:PORT or unix:PATH");
    }

    [Fact]
    public async Task A_unix_socket_url_reaches_the_same_store()
    {
        ProcessResult write = await ProcessRunner.RunAsync(KitCli.ExecutablePath, ["data", "write", "main:over/unix", "--url", $"unix:{Socket}"], TimeSpan.FromSeconds(60), "via the socket\n", cancellationToken: Cancel);
        Succeeded(write);
        Assert.Equal((await Git("rev-parse", "main")).Trim(), write.StandardOutput.Trim());
        ProcessResult cat = await Kit(["cat", "main:over/unix"]);
        Succeeded(cat);
        Assert.Equal("via the socket\n", cat.StandardOutput);
    }

    [Fact]
    public async Task Watch_sees_a_commit_made_by_another_client()
    {
        // A branch watched before it exists; the first commit to it comes from another kit process.
        using RunningProcess heads = ProcessRunner.Start(KitCli.ExecutablePath, ["data", "watch", "master", "--count", "1", "--url", _url]);
        await heads.WaitForLineAsync(l => l == "kit data: watching master", TimeSpan.FromSeconds(30), Cancel);
        Succeeded(await Kit(["write", "master:cfg", "-m", "first"], "v1\n"));
        ProcessResult watched = await heads.WaitAsync(TimeSpan.FromSeconds(30), Cancel);
        Succeeded(watched);
        Assert.Equal((await Git("rev-parse", "master")).Trim() + "\n", watched.StandardOutput);

        // A path's content: a commit that leaves cfg alone is not an event; the one that changes it is.
        using RunningProcess content = ProcessRunner.Start(KitCli.ExecutablePath, ["data", "watch", "master:cfg", "--count", "1", "--url", _url]);
        await content.WaitForLineAsync(l => l == "kit data: watching master:cfg", TimeSpan.FromSeconds(30), Cancel);
        Succeeded(await Kit(["write", "master:other", "-m", "unrelated"], "x"));
        Succeeded(await Kit(["write", "master:cfg", "-m", "second"], "v2\n"));
        ProcessResult contentWatched = await content.WaitAsync(TimeSpan.FromSeconds(30), Cancel);
        Succeeded(contentWatched);
        Assert.Equal("v2\n", contentWatched.StandardOutput);

        // --ids --initial: the current blob first, then the removal as an empty line.
        using RunningProcess ids = ProcessRunner.Start(KitCli.ExecutablePath, ["data", "watch", "master:cfg", "--ids", "--initial", "-n", "2", "--url", _url]);
        await ids.WaitForLineAsync(l => l == "kit data: watching master:cfg", TimeSpan.FromSeconds(30), Cancel);
        string blob = (await Git("rev-parse", "master:cfg")).Trim();
        Succeeded(await Kit(["commit", "master", "-m", "gone", "--delete", "cfg"]));
        ProcessResult idsWatched = await ids.WaitAsync(TimeSpan.FromSeconds(30), Cancel);
        Succeeded(idsWatched);
        Assert.Equal($"F-{blob}\n\n", idsWatched.StandardOutput);
    }
}
