using Kit.HyperKit.Devices.Virtio.Net;

namespace Kit.HyperKit.Vm;

/// <summary>A disk to attach as virtio-blk.</summary>
public sealed record DiskOptions(string Path, bool ReadOnly = false);

/// <summary>
/// A virtio-9p share: the guest mounts <paramref name="Tag"/>. <paramref name="Target"/> is a host directory served by
/// the built-in server, or tcp://HOST:PORT / unix:PATH of a 9P server to relay to. <paramref name="Trusted"/> applies the
/// guest's ownership and set-id bits to a host directory (docs/security.md, "Host shares").
/// </summary>
public sealed record ShareOptions(string Tag, string Target, bool ReadOnly = false, bool Trusted = false)
{
    public bool IsServer => Target.StartsWith("tcp://", StringComparison.Ordinal) || Target.StartsWith("unix:", StringComparison.Ordinal);
}

/// <summary>What to build: memory, vCPUs, console, devices.</summary>
public sealed class MachineOptions
{
    /// <summary>Guest RAM; at most 3 GiB (everything lives below the 32-bit MMIO gap).</summary>
    public ulong MemoryBytes { get; set; } = 512UL << 20;

    public int Cpus { get; set; } = 1;

    /// <summary>Receives every byte the guest writes to COM1.</summary>
    public Action<ReadOnlySpan<byte>> ConsoleOutput { get; set; } = _ => { };

    /// <summary>Bytes typed into COM1 (for example standard input); null for none.</summary>
    public Stream? ConsoleInput { get; set; }

    public List<DiskOptions> Disks { get; } = [];

    public bool Rng { get; set; } = true;

    /// <summary>virtio-net backend (VPNKit, VMN3T, TAP), or null for no network device. The machine disposes it.</summary>
    public INetBackend? Net { get; set; }

    /// <summary>The guest's MAC when the backend does not assign one; null picks a random locally administered one.</summary>
    public byte[]? NetMac { get; set; }

    /// <summary>virtio-9p shares: a host directory or a relay to a 9P server each.</summary>
    public List<ShareOptions> Shares { get; } = [];

    /// <summary>virtio-vsock host socket (Firecracker's CONNECT/OK protocol; guest connections go to PATH_PORT); null for none.</summary>
    public string? VsockPath { get; set; }

    /// <summary>The guest's vsock CID (3 unless set; 0-2 are reserved).</summary>
    public ulong VsockCid { get; set; } = 3;

    /// <summary>Adds the test exit port at 0x501 (freestanding programs end the run through it).</summary>
    public bool DebugExitPort { get; set; }
}

/// <summary>Raised for configuration problems the user can fix (bad kernel image, too little memory, ...).</summary>
public sealed class MachineConfigurationException(string message) : Exception(message);
