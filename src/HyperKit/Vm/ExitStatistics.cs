using System.Diagnostics;
using Kit.HyperKit.Hypervisor;

namespace Kit.HyperKit.Vm;

/// <summary>
/// Opt-in exit accounting for one vCPU (KIT_VM_STATS=1): how many exits of each kind, which ports and MMIO addresses
/// caused them, and how the time splits between running the guest and this process's handling. Each vCPU thread owns its own
/// instance, so counting needs no locks; the machine sums them once the threads have ended.
/// </summary>
internal sealed class ExitStatistics
{
    private const int MaxMmioAddresses = 4096;

    private readonly long[] _portReads = new long[0x1_0000];
    private readonly long[] _portWrites = new long[0x1_0000];
    private readonly long[] _reasons = new long[64];
    private readonly long[] _portTicks = new long[0x1_0000];
    private int _lastPort = -1;
    private readonly Dictionary<ulong, (long Reads, long Writes)> _mmio = [];
    private long _interrupted, _mmioOther, _inKvmTicks, _handlingTicks, _last;

    private static TimeSpan s_startup;

    /// <summary>True when the environment asks for statistics (KIT_VM_STATS=1).</summary>
    public static bool Requested => Environment.GetEnvironmentVariable("KIT_VM_STATS") == "1";

    /// <summary>
    /// Notes how long the process ran before its vCPUs started: the VMM's own start-up (runtime, command line, device
    /// set-up, kernel load), which counts in a boot's wall time but not in the guest's uptime.
    /// </summary>
    public static void MarkVcpusStarting() => s_startup = DateTime.Now - Process.GetCurrentProcess().StartTime;

    /// <summary>Called just before the vCPU enters the guest: the time since the previous exit was spent handling it here.</summary>
    public void EnterGuest()
    {
        long now = Stopwatch.GetTimestamp();
        if (_last != 0)
        {
            _handlingTicks += now - _last;
            if (_lastPort >= 0)
            {
                _portTicks[_lastPort] += now - _last;
            }
        }
        _last = now;
    }

    /// <summary>Called when the vCPU's run returned (an exit, or an interrupted run).</summary>
    public void LeaveGuest(in VmExit exit)
    {
        long now = Stopwatch.GetTimestamp();
        _inKvmTicks += now - _last;
        _last = now;
        _lastPort = -1;
        if (exit.Kind == VmExitKind.Interrupted)
        {
            _interrupted++;
            return;
        }
        _reasons[Math.Min((int)exit.Kind, 63)]++;
        if (exit.Kind is VmExitKind.IoIn or VmExitKind.IoOut)
        {
            (exit.Kind == VmExitKind.IoOut ? _portWrites : _portReads)[exit.Port] += Math.Max(exit.AccessSize == 0 ? 0 : exit.Data.Length / exit.AccessSize, 1);
            _lastPort = exit.Port;
        }
        else if (exit.Kind is VmExitKind.MmioRead or VmExitKind.MmioWrite)
        {
            // Group by 4-byte-aligned address; bounded so a guest scanning memory cannot grow the table without limit.
            ulong key = exit.Address & ~3UL;
            if (_mmio.TryGetValue(key, out var c) || _mmio.Count < MaxMmioAddresses)
            {
                _mmio[key] = exit.Kind == VmExitKind.MmioWrite ? (c.Reads, c.Writes + 1) : (c.Reads + 1, c.Writes);
            }
            else
            {
                _mmioOther++;
            }
        }
    }

    /// <summary>CPU time per thread of this process (Linux /proc): what competes with the vCPU threads for host CPUs.</summary>
    private static void ReportThreads(TextWriter output)
    {
        try
        {
            foreach (string task in Directory.GetDirectories("/proc/self/task"))
            {
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                int close = stat.LastIndexOf(')');
                string name = stat[(stat.IndexOf('(') + 1)..close];
                string[] fields = stat[(close + 2)..].Split(' ');
                // Fields after the name: state is [0], utime [11], stime [12], in clock ticks (USER_HZ, 100 on Linux).
                double seconds = (long.Parse(fields[11]) + long.Parse(fields[12])) / 100.0;
                if (seconds > 0)
                {
                    output.WriteLine($"kit: vm stats: thread {Path.GetFileName(task)} {name}: {seconds:0.00} s CPU");
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
        }
    }

    /// <summary>Writes the sum of several vCPUs' statistics, most frequent first.</summary>
    public static void Report(TextWriter output, IReadOnlyList<ExitStatistics> all, string hypervisor)
    {
        var reasons = new long[64];
        var reads = new long[0x1_0000];
        var writes = new long[0x1_0000];
        var ticks = new long[0x1_0000];
        var mmio = new Dictionary<ulong, (long Reads, long Writes)>();
        long interrupted = 0, mmioOther = 0, inKvm = 0, handling = 0;
        foreach (ExitStatistics s in all)
        {
            for (int i = 0; i < 64; i++)
            {
                reasons[i] += s._reasons[i];
            }
            for (int p = 0; p < 0x1_0000; p++)
            {
                reads[p] += s._portReads[p];
                writes[p] += s._portWrites[p];
                ticks[p] += s._portTicks[p];
            }
            foreach (var (address, c) in s._mmio)
            {
                mmio.TryGetValue(address, out var t);
                mmio[address] = (t.Reads + c.Reads, t.Writes + c.Writes);
            }
            interrupted += s._interrupted;
            mmioOther += s._mmioOther;
            inKvm += s._inKvmTicks;
            handling += s._handlingTicks;
        }
        long exits = 0;
        foreach (long r in reasons)
        {
            exits += r;
        }
        output.WriteLine($"kit: vm stats: vCPUs started {s_startup.TotalSeconds:0.000} s after the process");
        output.WriteLine($"kit: vm stats: {exits} exits to user space, {interrupted} interrupted runs; " +
            $"{Stopwatch.GetElapsedTime(0, inKvm).TotalSeconds:0.000} s in the guest ({hypervisor}), " +
            $"{Stopwatch.GetElapsedTime(0, handling).TotalSeconds:0.000} s handling exits " +
            $"({(exits == 0 ? 0 : Stopwatch.GetElapsedTime(0, handling).TotalMicroseconds / exits):0.0} us each)");
        output.WriteLine($"kit: vm stats: GCs gen0/1/2 {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)}, " +
            $"{GC.GetTotalAllocatedBytes() >> 10} KiB allocated, JIT compiled {System.Runtime.JitInfo.GetCompiledMethodCount()} methods " +
            $"in {System.Runtime.JitInfo.GetCompilationTime().TotalSeconds:0.000} s");
        ReportThreads(output);
        for (int i = 0; i < 64; i++)
        {
            if (reasons[i] != 0)
            {
                output.WriteLine($"kit: vm stats: exit {(VmExitKind)i}: {reasons[i]}");
            }
        }
        var ports = new List<(long Total, int Port)>();
        for (int p = 0; p < 0x1_0000; p++)
        {
            if (reads[p] + writes[p] != 0)
            {
                ports.Add((reads[p] + writes[p], p));
            }
        }
        ports.Sort((a, b) => b.Total.CompareTo(a.Total));
        foreach (var (total, port) in ports)
        {
            output.WriteLine($"kit: vm stats: port 0x{port:x4}: {reads[port]} in, {writes[port]} out, " +
                $"{Stopwatch.GetElapsedTime(0, ticks[port]).TotalMicroseconds / total:0.0} us handling each");
        }
        var addresses = new List<(long Total, ulong Address)>();
        foreach (var (address, c) in mmio)
        {
            addresses.Add((c.Reads + c.Writes, address));
        }
        addresses.Sort((a, b) => b.Total.CompareTo(a.Total));
        for (int i = 0; i < addresses.Count && i < 40; i++)
        {
            var c = mmio[addresses[i].Address];
            output.WriteLine($"kit: vm stats: mmio 0x{addresses[i].Address:x}: {c.Reads} reads, {c.Writes} writes");
        }
        if (addresses.Count > 40 || mmioOther != 0)
        {
            output.WriteLine($"kit: vm stats: mmio: {addresses.Count - Math.Min(addresses.Count, 40)} more addresses, {mmioOther} accesses past the table");
        }
    }
}
