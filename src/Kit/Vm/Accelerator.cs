using Kit.Cli.Commands;
using Kit.HyperKit.Kvm;

namespace Kit.Cli.Vm;

/// <summary>Where a guest's CPU runs: <c>--accel auto|kvm|tcg</c>.</summary>
internal enum Accelerator
{
    /// <summary>kvm where /dev/kvm offers hardware virtualization, else tcg.</summary>
    Auto,
    /// <summary>Kit's own VMM on /dev/kvm (HyperKit).</summary>
    Kvm,
    /// <summary>QEMU's software CPU, supervised by kit, with Kit's devices over vhost-user.</summary>
    Tcg,
}

internal static class Accelerators
{
    public const string OptionHelp =
        "Where the guest's CPU runs: kvm (Kit's VMM on hardware KVM), tcg (QEMU's software CPU, started by kit, with Kit's devices over vhost-user), or auto: kvm when /dev/kvm offers hardware virtualization, else tcg.";

    public static Accelerator Parse(string? text) => text switch
    {
        null or "auto" => Accelerator.Auto,
        "kvm" => Accelerator.Kvm,
        "tcg" => Accelerator.Tcg,
        _ => throw new CliException($"--accel wants auto, kvm or tcg, got \"{text}\""),
    };

    /// <summary>
    /// Turns auto into kvm or tcg, saying on stderr (one line) why it took tcg; an explicit kvm on a host without
    /// hardware KVM fails with the reason.
    /// </summary>
    public static Accelerator Resolve(Accelerator requested)
    {
        if (requested == Accelerator.Tcg)
        {
            return Accelerator.Tcg;
        }
        string? why = KvmSystem.Probe() switch
        {
            KvmAvailability.Missing => "/dev/kvm is missing: this host offers no KVM",
            KvmAvailability.Pvm => "/dev/kvm here is PVM (kvm_pvm, no vmx/svm), which would emulate a stock guest instruction by instruction",
            _ => null,
        };
        if (why is null)
        {
            return Accelerator.Kvm;
        }
        if (requested == Accelerator.Kvm)
        {
            throw new CliException($"--accel kvm: {why}");
        }
        Console.Error.WriteLine($"kit: {why}; using QEMU's software CPU (--accel tcg)");
        return Accelerator.Tcg;
    }
}
