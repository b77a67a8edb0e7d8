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
    private static int Main(string[] args)
    {
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
