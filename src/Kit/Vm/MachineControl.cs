namespace Kit.Cli.Vm;

/// <summary>
/// What a supervisor (the machine daemon) may do to a running VM from outside it: press the ACPI power button (the
/// guest shuts itself down) or end it now. The runner that boots the VM binds what its accelerator offers: under tcg
/// QMP's system_powerdown and quit; Kit's own VMM has no ACPI power button yet, so there the guest agent's shutdown is
/// the clean way.
/// </summary>
internal sealed class MachineControl
{
    private volatile Action? _powerButton;
    private volatile Action? _quit;

    public void Bind(Action? powerButton, Action quit)
    {
        _powerButton = powerButton;
        _quit = quit;
    }

    /// <summary>False when the VM has no power button (or is not running).</summary>
    public bool PressPowerButton()
    {
        Action? press = _powerButton;
        press?.Invoke();
        return press is not null;
    }

    /// <summary>Ends the VM now, as pulling the plug would.</summary>
    public void Quit() => _quit?.Invoke();
}
