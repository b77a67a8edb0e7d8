using Kit.HyperKit.Devices;
using Kit.HyperKit.Hypervisor;

namespace Kit.HyperKit.Vm;

/// <summary>What a vCPU thread needs from the machine it runs in: whether to stop, and how to stop everything.</summary>
internal interface IVcpuHost
{
    bool Stopping { get; }

    /// <summary>Stops the machine with a reason (first reason wins) and kicks every vCPU.</summary>
    void RequestStop(MachineExit exit);
}

/// <summary>
/// One vCPU's run loop over the hypervisor seam: enter the guest, then dispatch the <see cref="VmExit"/> to the port
/// or MMIO bus, or turn it into the machine's <see cref="MachineExit"/>. Runs on a dedicated OS thread.
/// </summary>
internal sealed class VcpuRunner(int index, IVcpu vcpu, string hypervisor, PortBus ports, MmioBus mmio, IVcpuHost host,
    QueuedWriteReplay? queued = null, ExitStatistics? stats = null)
{
    /// <summary>The thread body: runs until the machine stops or the hypervisor fails.</summary>
    public void Run()
    {
        vcpu.BindCurrentThread();
        try
        {
            while (!host.Stopping)
            {
                stats?.EnterGuest();
                VmExit exit = vcpu.Run();
                stats?.LeaveGuest(exit);
                if (exit.Kind == VmExitKind.Interrupted)
                {
                    if (host.Stopping)
                    {
                        break;
                    }
                    vcpu.ClearKick();
                    continue;
                }
                Handle(exit);
            }
        }
        catch (Exception e) when (e is HypervisorException or InvalidOperationException or ArgumentException)
        {
            host.RequestStop(new MachineExit(MachineExitKind.Error, $"vCPU {index}: {e.Message}"));
        }
    }

    /// <summary>Handles one exit: replays queued writes first, then completes the access or stops the machine.</summary>
    public void Handle(in VmExit exit)
    {
        queued?.ReplayPending();
        switch (exit.Kind)
        {
            case VmExitKind.IoOut:
            {
                // A REP OUTS string is several accesses of one size, in order.
                Span<byte> data = exit.Data;
                int size = exit.AccessSize;
                for (int i = 0; i + size <= data.Length; i += size)
                {
                    ports.Write(exit.Port, data.Slice(i, size));
                }
                break;
            }
            case VmExitKind.IoIn:
            {
                Span<byte> data = exit.Data;
                int size = exit.AccessSize;
                for (int i = 0; i + size <= data.Length; i += size)
                {
                    ports.Read(exit.Port, data.Slice(i, size));
                }
                break;
            }
            case VmExitKind.MmioWrite:
                mmio.Write(exit.Address, exit.Data);
                break;
            case VmExitKind.MmioRead:
                mmio.Read(exit.Address, exit.Data);
                break;
            case VmExitKind.Ignore:
            case VmExitKind.Interrupted:
                break;
            case VmExitKind.Hlt:
                host.RequestStop(new MachineExit(MachineExitKind.Error, $"vCPU {index} halted outside the in-kernel LAPIC ({vcpu.DescribeState()})"));
                break;
            case VmExitKind.Shutdown:
                host.RequestStop(new MachineExit(MachineExitKind.TripleFault, $"vCPU {index} triple-faulted ({vcpu.DescribeState()})"));
                break;
            case VmExitKind.SystemEvent:
                host.RequestStop(exit.SystemEvent switch
                {
                    SystemEventKind.PowerOff => new MachineExit(MachineExitKind.PowerOff, "the guest powered off"),
                    SystemEventKind.Reset => new MachineExit(MachineExitKind.Reset, "the guest reset the machine"),
                    SystemEventKind.Crash => new MachineExit(MachineExitKind.Panic, $"{hypervisor} reported a guest crash"),
                    _ => new MachineExit(MachineExitKind.Error, $"{hypervisor} system event {exit.Code} on vCPU {index}"),
                });
                break;
            case VmExitKind.InternalError:
                host.RequestStop(new MachineExit(MachineExitKind.Error,
                    $"{hypervisor} internal error on vCPU {index}: suberror {exit.Code} (1 = emulation failure) data [{exit.Detail}] ({vcpu.DescribeState()})"));
                break;
            case VmExitKind.FailEntry:
                host.RequestStop(new MachineExit(MachineExitKind.Error,
                    $"{hypervisor} could not enter vCPU {index}: hardware reason 0x{exit.Code:x} ({vcpu.DescribeState()})"));
                break;
            default:
                host.RequestStop(new MachineExit(MachineExitKind.Error,
                    $"unhandled {hypervisor} exit {exit.Code} ({exit.Detail}) on vCPU {index} ({vcpu.DescribeState()})"));
                break;
        }
    }
}

/// <summary>
/// Replays the writes a hypervisor queued instead of exiting (<see cref="IQueuedWrites"/>), oldest first, to the buses
/// before any exit is handled. One per VM, shared by its vCPU runners.
/// </summary>
internal sealed class QueuedWriteReplay(IQueuedWrites queue, PortBus ports, MmioBus mmio)
{
    private readonly Lock _lock = new();

    /// <summary>Replays whatever is queued; costs two loads and no lock when nothing is.</summary>
    public void ReplayPending()
    {
        if (queue.IsEmpty)
        {
            return;
        }
        // The entry stays queued until it has been applied, so a vCPU that sees a non-empty queue waits here for
        // another vCPU's replay to finish instead of handling its exit against stale state.
        lock (_lock)
        {
            Span<byte> data = stackalloc byte[8];
            while (queue.TryPeek(out ulong address, out bool pio, data, out int length))
            {
                if (pio)
                {
                    ports.Write((ushort)address, data[..length]);
                }
                else
                {
                    mmio.Write(address, data[..length]);
                }
                queue.Advance();
            }
        }
    }
}
