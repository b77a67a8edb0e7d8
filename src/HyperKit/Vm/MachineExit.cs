namespace Kit.HyperKit.Vm;

/// <summary>How a guest run ended. The numeric values are the `kit vm run` exit codes (hyperkit's, extended).</summary>
public enum MachineExitKind
{
    /// <summary>The guest powered off (ACPI S5).</summary>
    PowerOff = 0,
    /// <summary>The VMM failed (KVM error, unhandled exit, bad configuration).</summary>
    Error = 1,
    /// <summary>The guest reset the machine (i8042 0xFE, port 0xCF9, KVM reset event). The caller may restart it.</summary>
    Reset = 2,
    /// <summary>Triple fault (KVM_EXIT_SHUTDOWN): the CPU could not even deliver a double fault.</summary>
    TripleFault = 3,
    /// <summary>The guest kernel panicked (console marker or KVM crash event).</summary>
    Panic = 4,
    /// <summary>A freestanding test program wrote its result to the debug exit port.</summary>
    DebugExit = 5,
    /// <summary>The run exceeded the caller's time limit and was stopped.</summary>
    Timeout = 6,
}

/// <summary>The outcome of <see cref="Machine.Run"/>.</summary>
public sealed record MachineExit(MachineExitKind Kind, string Message, byte DebugCode = 0)
{
    public int ExitCode => (int)Kind;
}
