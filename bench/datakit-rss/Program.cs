using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Runtime.InteropServices;
using System.Text;
using Kit.DataKit;
using Kit.DataKit.Client;
using Kit.NineP.Server;

// DataKit's RSS under a commit loop, split into its parts (issue 12, docs/soak.md): an in-process DataKitServer on a
// fresh store and the soak's commit loop (one file of 64 replaced per transaction, a new connection every 50 commits),
// sampled every INTERVAL seconds: RSS (anonymous / file-backed), the GC heap (size, committed, fragmentation, per
// generation), glibc malloc's arenas (mallinfo2), threads and descriptors.
// Usage: datakit-rss SECONDS [INTERVAL_S] [PAUSE_MS] [PORT PID STORE]   (env DATAKIT_RSS_GC=1: a full blocking GC before
// each sample). With PORT PID STORE the loop goes to a running `kit data serve` (pid PID, store STORE) on 127.0.0.1:PORT,
// and that process's RSS, threads and descriptors are sampled (the GC and malloc columns are then this driver's own:
// run.sh splits the server's RSS from its smaps instead).

int seconds = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 120;
int interval = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 10;
int pauseMs = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 0;
bool forceGc = Environment.GetEnvironmentVariable("DATAKIT_RSS_GC") == "1";
int pid = args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 0;
string store = pid != 0 ? args[5] : Directory.CreateTempSubdirectory("datakit-rss-").FullName;
DataKitServer? server = pid != 0 ? null : new DataKitServer(store);
int port = pid != 0 ? int.Parse(args[3], CultureInfo.InvariantCulture) : ((IPEndPoint)server!.Listen(Parse("tcp://127.0.0.1:0"))).Port;
ListenAddress address = Parse($"tcp://127.0.0.1:{port}");
string proc = pid != 0 ? $"/proc/{pid}" : "/proc/self";

Console.WriteLine($"store {store}; {seconds} s, sample every {interval} s, pause {pauseMs} ms, gcServer={System.Runtime.GCSettings.IsServerGC}, forced GC before samples={forceGc}");
Console.WriteLine("   t_s commits  rss_mib anon_mib file_mib | gc_heap gc_comm gc_frag  gen0  gen1  gen2   loh   poh  gcs(0/1/2) | malloc_arena malloc_inuse malloc_free mmap | thr fds loose");
var clock = Stopwatch.StartNew();
long commits = 0;
using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(seconds));
Task loop = Task.Run(async () =>
{
    DataKitClient client = await DataKitClient.ConnectAsync(address);
    try
    {
        for (int i = 1; !stop.IsCancellationRequested; i++)
        {
            if (i % 50 == 0)
            {
                await client.DisposeAsync();
                client = await DataKitClient.ConnectAsync(address);
            }
            Branch branch = await client.BranchAsync("soak");
            await using (Transaction t = await branch.TransactionAsync())
            {
                await t.CreateOrReplaceFileAsync($"file-{i % 64}", Encoding.UTF8.GetBytes($"iteration {i} at {DateTime.UtcNow:O}\n"));
                await t.CommitAsync($"soak {i}");
            }
            _ = await branch.HeadAsync();
            Interlocked.Increment(ref commits);
            if (pauseMs > 0)
            {
                await Task.Delay(pauseMs);
            }
        }
    }
    finally
    {
        await client.DisposeAsync();
    }
});

using var tick = new PeriodicTimer(TimeSpan.FromSeconds(interval));
Sample();
while (!stop.IsCancellationRequested && await tick.WaitForNextTickAsync())
{
    Sample();
}
await loop;
Sample();
if (server is not null)
{
    await server.DisposeAsync();
    Directory.Delete(store, true);
}

static ListenAddress Parse(string text) => ListenAddress.TryParse(text, out ListenAddress? a, out string e) ? a! : throw new ArgumentException(e);

void Sample()
{
    if (forceGc)
    {
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
    }
    long rss = 0, anon = 0, file = 0;
    foreach (string line in File.ReadLines($"{proc}/status"))
    {
        static long Kib(string l) => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        if (line.StartsWith("VmRSS:", StringComparison.Ordinal)) rss = Kib(line);
        else if (line.StartsWith("RssAnon:", StringComparison.Ordinal)) anon = Kib(line);
        else if (line.StartsWith("RssFile:", StringComparison.Ordinal)) file = Kib(line);
    }
    GCMemoryInfo gc = GC.GetGCMemoryInfo(GCKind.Any);
    ReadOnlySpan<GCGenerationInfo> gens = gc.GenerationInfo;
    MallInfo2 m = mallinfo2();
    int threads = Directory.GetDirectories($"{proc}/task").Length;
    int fds = Directory.GetFileSystemEntries($"{proc}/fd").Length;
    int loose = Directory.Exists(Path.Combine(store, "objects")) ? Directory.EnumerateFiles(Path.Combine(store, "objects"), "*", SearchOption.AllDirectories).Count() : 0;
    static string M(long b) => (b / 1048576.0).ToString("F1", CultureInfo.InvariantCulture);
    Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
        $"{clock.Elapsed.TotalSeconds,6:F0} {Interlocked.Read(ref commits),7} {rss / 1024.0,8:F1} {anon / 1024.0,8:F1} {file / 1024.0,8:F1} | {M(gc.HeapSizeBytes),7} {M(gc.TotalCommittedBytes),7} {M(gc.FragmentedBytes),7} {M(gens[0].SizeAfterBytes),5} {M(gens[1].SizeAfterBytes),5} {M(gens[2].SizeAfterBytes),5} {M(gens[3].SizeAfterBytes),5} {M(gens[4].SizeAfterBytes),5} {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)} | {M((long)m.arena),12} {M((long)m.uordblks),12} {M((long)m.fordblks),11} {M((long)m.hblkhd),4} | {threads,3} {fds,3} {loose}"));
}

[DllImport("libc", EntryPoint = "mallinfo2")]
static extern MallInfo2 mallinfo2();

[StructLayout(LayoutKind.Sequential)]
internal struct MallInfo2
{
    public nuint arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
}
