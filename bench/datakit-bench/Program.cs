using System.Diagnostics;
using System.Net;
using System.Text;
using Kit.DataKit;
using Kit.DataKit.Client;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

// Side-by-side DataKit measurements (not tests): transactions/s against the git CLI, commit-to-tree.live latency,
// small-file walk+getattr ops/s against diod with the same client, and commit time in a 100,000-file tree.
// Usage: datakit-bench WORKDIR [DIOD_PORT]   (DIOD_PORT: a diod already exporting WORKDIR/diod-export, aname = that path)

string work = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "datakit-bench");
int diodPort = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 0;
Directory.CreateDirectory(work);
string git = Path.Combine(work, "store");
if (Directory.Exists(git))
{
    Directory.Delete(git, true);
}

await using var server = new DataKitServer(git);
ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
var ep = (IPEndPoint)server.Listen(any!);
var address = new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}");
await using DataKitClient dk = await DataKitClient.ConnectAsync(address);
Branch master = await dk.BranchAsync("master");

// 1. Transactions per second: open, write one file, commit.
const int txCount = 300;
var sw = Stopwatch.StartNew();
for (int i = 0; i < txCount; i++)
{
    await using Transaction t = await master.TransactionAsync();
    await t.CreateFileAsync($"f{i % 20}", Encoding.UTF8.GetBytes($"value {i}\n"));
    await t.CommitAsync($"commit {i}");
}
double txPerSec = txCount / sw.Elapsed.TotalSeconds;
Console.WriteLine($"datakit 9P transactions/s: {txPerSec:F0} ({txCount} commits, open+write+commit each)");

// The same change with the git CLI: write a file in a checkout, git add, git commit.
string checkout = Path.Combine(work, "gitcli");
if (Directory.Exists(checkout))
{
    Directory.Delete(checkout, true);
}
Directory.CreateDirectory(checkout);
void RunGit(params string[] a)
{
    var psi = new ProcessStartInfo("git") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    psi.ArgumentList.Add("-C");
    psi.ArgumentList.Add(checkout);
    foreach (string s in a)
    {
        psi.ArgumentList.Add(s);
    }
    psi.Environment["GIT_AUTHOR_NAME"] = psi.Environment["GIT_COMMITTER_NAME"] = "bench";
    psi.Environment["GIT_AUTHOR_EMAIL"] = psi.Environment["GIT_COMMITTER_EMAIL"] = "bench@example.com";
    using Process p = Process.Start(psi)!;
    p.WaitForExit();
}
RunGit("init", "-q");
const int gitCount = 100;
sw.Restart();
for (int i = 0; i < gitCount; i++)
{
    File.WriteAllText(Path.Combine(checkout, $"f{i % 20}"), $"value {i}\n");
    RunGit("add", $"f{i % 20}");
    RunGit("commit", "-q", "-m", $"commit {i}");
}
double gitPerSec = gitCount / sw.Elapsed.TotalSeconds;
Console.WriteLine($"git CLI commits/s (write, git add, git commit): {gitPerSec:F0}");

// 2. Commit-to-tree.live latency: a watcher on another connection; time from the ctl write to the new line.
await using DataKitClient watcher = await DataKitClient.ConnectAsync(address);
Branch watched = await watcher.BranchAsync("master");
var latencies = new List<double>();
using (var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2)))
{
    await using IAsyncEnumerator<TreeNodeRef?> stream = watched.WatchPathAsync("live", cts.Token).GetAsyncEnumerator(cts.Token);
    await stream.MoveNextAsync();
    for (int i = 0; i < 100; i++)
    {
        await using Transaction t = await master.TransactionAsync();
        await t.CreateFileAsync("live", Encoding.UTF8.GetBytes($"{i}"));
        long start = Stopwatch.GetTimestamp();
        ValueTask<bool> next = stream.MoveNextAsync();
        await t.CommitAsync($"live {i}");
        await next;
        latencies.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
    }
}
latencies.Sort();
Console.WriteLine($"commit-to-tree.live latency: median {latencies[latencies.Count / 2]:F2} ms, p90 {latencies[latencies.Count * 9 / 10]:F2} ms (commit ack included)");

// 3. Small-file walk+getattr+clunk ops/s, same client (ours, 9P2000.L), against DataKit ro/ and against diod.
async Task<double> StatOps(ListenAddress target, string aname, string path)
{
    await using NinePClient c = await NinePClient.ConnectAsync(target, Dialect.Linux, 65536, aname);
    const int n = 5000;
    var s = Stopwatch.StartNew();
    var inflight = new List<Task>();
    for (int i = 0; i < n; i++)
    {
        inflight.Add(Task.Run(async () =>
        {
            uint fid = await c.WalkAsync(path);
            await c.RpcAsync(new Fcall { Type = MessageType.Tgetattr, Fid = fid, RequestMask = P9.GetattrBasic });
            await c.ClunkAsync(fid);
        }));
        if (inflight.Count == 4)
        {
            await Task.WhenAll(inflight);
            inflight.Clear();
        }
    }
    await Task.WhenAll(inflight);
    return n / s.Elapsed.TotalSeconds;
}
Console.WriteLine($"walk+getattr+clunk ops/s, DataKit branch/master/ro/f1: {await StatOps(address, "", "branch/master/ro/f1"):F0}");
if (diodPort != 0)
{
    ListenAddress.TryParse($"tcp://127.0.0.1:{diodPort}", out ListenAddress? diod, out _);
    string export = Path.Combine(work, "diod-export");
    Console.WriteLine($"walk+getattr+clunk ops/s, diod {export}/f1: {await StatOps(diod!, export, "f1"):F0}");
}

// 4. Commit time in a tree of 100,000 files (1,000 directories of 100), changing one file.
GitStore store = server.Store;
var top = new List<GitEntry>();
ObjectIdCache blobs = new(store);
for (int d = 0; d < 1000; d++)
{
    var files = new List<GitEntry>(100);
    for (int f = 0; f < 100; f++)
    {
        files.Add(new GitEntry($"file{f:D3}", EntryKind.File, blobs.Get(f)));
    }
    top.Add(new GitEntry($"dir{d:D4}", EntryKind.Dir, store.WriteTree(files)));
}
var big = store.WriteCommit(store.WriteTree(top), [], "100k files");
store.TrySetHead("big", big, null, "bench");
Branch bigBranch = await dk.BranchAsync("big");
var commitTimes = new List<double>();
for (int i = 0; i < 20; i++)
{
    await using Transaction t = await bigBranch.TransactionAsync();
    await t.ReplaceFileAsync($"dir{i * 37 % 1000:D4}/file042", Encoding.UTF8.GetBytes($"changed {i}"));
    var s = Stopwatch.StartNew();
    await t.CommitAsync($"change {i}");
    commitTimes.Add(s.Elapsed.TotalMilliseconds);
}
commitTimes.Sort();
Console.WriteLine($"commit of a one-file change in a 100,000-file tree: median {commitTimes[commitTimes.Count / 2]:F2} ms");
var smallTimes = new List<double>();
for (int i = 0; i < 20; i++)
{
    await using Transaction t = await master.TransactionAsync();
    await t.CreateFileAsync("small", Encoding.UTF8.GetBytes($"changed {i}"));
    var s = Stopwatch.StartNew();
    await t.CommitAsync($"small {i}");
    smallTimes.Add(s.Elapsed.TotalMilliseconds);
}
smallTimes.Sort();
Console.WriteLine($"commit of a one-file change in a 21-file tree: median {smallTimes[smallTimes.Count / 2]:F2} ms");

internal sealed class ObjectIdCache(GitStore store)
{
    private readonly Dictionary<int, LibGit2Sharp.ObjectId> _ids = [];

    public LibGit2Sharp.ObjectId Get(int i)
    {
        if (!_ids.TryGetValue(i, out LibGit2Sharp.ObjectId? id))
        {
            id = store.WriteBlob(Encoding.UTF8.GetBytes($"content {i}\n"));
            _ids[i] = id;
        }
        return id;
    }
}
