using System.CommandLine;
using Kit.Cli.Commands;

// Kit drives /dev/kvm, TAP, network namespaces and Unix sockets: it is a Linux program, and says so once here instead
// of guarding each Unix-only call.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Kit.Cli;

/// <summary>
/// The `kit` command: the composition root, the only place that joins NineP, VpnKit, DataKit and HyperKit.
/// Each command lives in its own file under Commands/; a command appears here only once its issue is done,
/// so `kit --help` never lists a stub.
/// </summary>
internal static class Program
{
    /// <summary>
    /// glibc's malloc keeps what is freed for reuse, and two of its defaults let that grow with no live data behind it:
    /// a thread gets an arena of its own once arenas are contended (up to 8 per core), and freeing a large mapped block
    /// raises the size below which blocks come from an arena, and the free space an arena keeps, to that block's size
    /// (the "dynamic mmap threshold"). Kit's native allocations are few (libgit2 under DataKit's store lock, zlib,
    /// OpenSSL), but the thread pool hands them to whichever thread runs: in the soak under CPU starvation
    /// `kit data serve`'s anonymous memory stepped up 2-4 MiB with no live data behind it, 2.4 MiB of it in one arena
    /// (docs/soak.md). Two arenas hold the same work, and a fixed threshold keeps blocks of 1 MiB and more out of them.
    /// </summary>
    private const int MallocArenas = 2, MallocMmapThreshold = 1 << 20;

    private static int Main(string[] args)
    {
        Kit.Linux.Sys.Mallopt(Kit.Linux.Sys.M_ARENA_MAX, MallocArenas);
        Kit.Linux.Sys.Mallopt(Kit.Linux.Sys.M_MMAP_THRESHOLD, MallocMmapThreshold);
        var root = new RootCommand("Kit: lightweight Linux VMs (HyperKit), user-space networking (VPNKit) and a git-backed 9P store (DataKit).")
        {
            GuestCommand.Create(),
            ImageCommand.Create(),
            VmCommand.Create(),
            NetCommand.Create(),
            DataCommand.Create(),
            UpCommand.Create(),
        };
        foreach (Command c in MachineCommands.Create().Concat(ExecCommand.Create()))
        {
            root.Subcommands.Add(c);
        }
        KitLogging.AddTo(root);
        foreach (Command c in CompletionCommand.Create(root))
        {
            root.Subcommands.Add(c);
        }
        return CliRunner.Run(root, args);
    }
}
