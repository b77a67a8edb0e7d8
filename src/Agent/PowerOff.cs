using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>
/// The clean shutdown behind the Shutdown request and the ACPI power button: `poweroff` when there is one (busybox init
/// then stops its services, syncs and powers off), else sync and reboot(2) POWER_OFF. With <see cref="DryRun"/> (the
/// tests run the agent on a real host) it only logs and ends the agent. If init has not powered off 10 s after
/// `poweroff`, the agent powers off itself.
/// </summary>
internal static class PowerOff
{
    private static int s_started;

    public static bool DryRun { get; set; }

    /// <summary>How long `poweroff` gets to have init power the machine off before the agent does it itself.</summary>
    private static readonly TimeSpan InitGrace = TimeSpan.FromSeconds(10);

    /// <summary>Starts the shutdown (once; later calls are ignored) on a thread of its own and returns.</summary>
    public static void Start(string reason)
    {
        if (Interlocked.Exchange(ref s_started, 1) != 0)
        {
            return;
        }
        Log.Line($"shutting down: {reason}{(DryRun ? " (dry run: the agent exits instead)" : "")}");
        if (DryRun)
        {
            Environment.Exit(0);
        }
        new Thread(Run) { IsBackground = true, Name = "poweroff" }.Start();
    }

    private static void Run()
    {
        Native.Sync();
        if (TryPoweroffCommand())
        {
            // Busybox poweroff only signals PID 1; an init that ignores it (a plain /init script) leaves us running.
            Thread.Sleep(InitGrace);
            Log.Line($"still running {InitGrace.TotalSeconds:F0} s after poweroff; powering off directly");
            Native.Sync();
        }
        if (Native.Reboot(Native.LINUX_REBOOT_CMD_POWER_OFF) != 0)
        {
            Log.Line($"reboot(POWER_OFF) failed: {Native.ErrorText(System.Runtime.InteropServices.Marshal.GetLastPInvokeError())}");
            Interlocked.Exchange(ref s_started, 0);
        }
    }

    private static bool TryPoweroffCommand()
    {
        try
        {
            Child child = Child.Start(new ExecMessage(["poweroff"]));
            _ = Native.Close(child.Input);
            _ = Native.Close(child.Output);
            _ = Native.Close(child.Error);
            (int code, _) = ExecHandler.ExitCode(Native.WaitForExit(child.Pid));
            if (code == 0)
            {
                return true;
            }
            Log.Line($"poweroff exited with {code}; powering off directly");
        }
        catch (Exception e) when (e is SpawnException or IOException)
        {
            Log.Line($"poweroff: {e.Message}; powering off directly");
        }
        return false;
    }
}
