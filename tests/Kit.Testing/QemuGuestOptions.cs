namespace Kit.Testing;

/// <summary>A guest network interface: a virtio-net-pci device on one QEMU -netdev backend.</summary>
public sealed record QemuNetwork(string Backend, string? Mac = null, string? DeviceOptions = null)
{
    /// <summary>
    /// <c>-netdev vhost-user</c> on a socket chardev that connects to a backend already listening at
    /// <paramref name="unixSocketPath"/>. Needs shared guest RAM (<see cref="QemuGuestOptions.SharedMemory"/>), and
    /// MSI-X off on the device (vectors=0): Debian 12's QEMU 7.2 segfaults in vhost_net_start under TCG otherwise.
    /// </summary>
    public static QemuNetwork VhostUser(string chardevId, string? mac = null) =>
        new($"vhost-user,chardev={chardevId}", mac, "vectors=0");

    /// <summary>
    /// <c>-netdev stream</c> connecting to a Unix socket the test already listens on; each frame travels with a
    /// 4-byte big-endian length in front (QEMU 7.2 net/stream.c).
    /// </summary>
    public static QemuNetwork Stream(string unixSocketPath, string? mac = null) =>
        new($"stream,server=off,addr.type=unix,addr.path={QemuGuestOptions.Escape(unixSocketPath)}", mac);

    /// <summary><c>-netdev dgram</c>: one Ethernet frame per datagram between two Unix datagram socket paths.</summary>
    public static QemuNetwork Dgram(string localPath, string remotePath, string? mac = null) =>
        new($"dgram,local.type=unix,local.path={QemuGuestOptions.Escape(localPath)},remote.type=unix,remote.path={QemuGuestOptions.Escape(remotePath)}", mac);

    /// <summary>
    /// <c>-netdev user</c> (libslirp): guest 10.0.2.15, gateway 10.0.2.2. Never use its DNS (10.0.2.3) in tests:
    /// it forwards to the host's resolver, which is not on this machine (testing-here.md section 4).
    /// </summary>
    public static QemuNetwork User(string? options = null, string? mac = null) =>
        new(options is null ? "user" : $"user,{options}", mac);
}

/// <summary>How to boot a <see cref="QemuGuest"/>. Defaults: TCG, 1 vCPU, 512 MiB, no devices, 120 s.</summary>
public sealed class QemuGuestOptions
{
    /// <summary>Guest RAM; the stock kernel needs about 256 MiB to unpack itself.</summary>
    public int MemoryMiB { get; set; } = 512;

    public int Cpus { get; set; } = 1;

    /// <summary>The -cpu model; null keeps QEMU's default. "max" exposes SVM for nested KVM.</summary>
    public string? Cpu { get; set; }

    /// <summary>From QEMU start to guest power-off (waiting for a free QEMU slot is not counted).</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>Kernel and initramfs; null uses <see cref="GuestImage.GetDefaultAsync"/>.</summary>
    public GuestImage? Image { get; set; }

    /// <summary>Appended to the kernel command line (after console=ttyS0 quiet panic=-1 no_timer_check).</summary>
    public List<string> KernelArguments { get; } = [];

    /// <summary>Extra files placed in the guest's initramfs (guest path to bytes, mode 0755).</summary>
    public Dictionary<string, byte[]> Files { get; } = new(StringComparer.Ordinal);

    /// <summary>Network interfaces in order: eth0, eth1, ...</summary>
    public List<QemuNetwork> Networks { get; } = [];

    /// <summary>Host directories shared over virtio-9p: mount with <c>mount -t 9p -o trans=virtio,version=9p2000.L TAG DIR</c>.</summary>
    public List<(string Tag, string HostPath, bool ReadOnly)> Shares { get; } = [];

    /// <summary>Disk images on virtio-blk: /dev/vda, /dev/vdb, ...</summary>
    public List<(string Path, string Format, bool ReadOnly)> Disks { get; } = [];

    /// <summary>Raw QEMU arguments appended last.</summary>
    public List<string> ExtraArguments { get; } = [];

    /// <summary>Guest RAM from a shared memfd (what vhost-user backends map: SET_MEM_TABLE passes its descriptor).</summary>
    public bool SharedMemory { get; set; }

    public QemuGuestOptions AddNetwork(QemuNetwork network)
    {
        Networks.Add(network);
        return this;
    }

    public QemuGuestOptions AddShare(string tag, string hostPath, bool readOnly = false)
    {
        Shares.Add((tag, hostPath, readOnly));
        return this;
    }

    public QemuGuestOptions AddDisk(string path, string format = "raw", bool readOnly = false)
    {
        Disks.Add((path, format, readOnly));
        return this;
    }

    /// <summary>The QEMU command line (without the program name) for this guest.</summary>
    internal List<string> BuildArguments(GuestImage image, string initrd)
    {
        List<string> args =
        [
            "-accel", "tcg",
            "-m", MemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-smp", Cpus.ToString(System.Globalization.CultureInfo.InvariantCulture),
            // No default NIC, VGA, floppy or CD; the serial port is the console and the only output.
            "-nodefaults", "-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
            // Names the owning test process, so a later run can kill guests whose owner died (QemuGuest.KillOrphans).
            "-name", QemuGuest.OwnerTag + System.Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture),
            "-kernel", image.Kernel,
            "-initrd", initrd,
            // no_timer_check: under TCG on a loaded host the kernel's IO-APIC timer check can miss its window and
            // panic ("IO-APIC + timer doesn't work"); the check guards against broken chipsets, not QEMU's.
            "-append", string.Join(' ', ["console=ttyS0", "quiet", "panic=-1", "no_timer_check", .. KernelArguments]),
        ];
        if (Cpu is not null)
        {
            args.AddRange(["-cpu", Cpu]);
        }
        for (int i = 0; i < Networks.Count; i++)
        {
            QemuNetwork net = Networks[i];
            args.AddRange(["-netdev", $"{net.Backend},id=net{i}"]);
            args.AddRange(["-device", $"virtio-net-pci,netdev=net{i}" + (net.Mac is null ? "" : $",mac={net.Mac}")
                + (net.DeviceOptions is null ? "" : "," + net.DeviceOptions)]);
        }
        foreach ((string tag, string hostPath, bool readOnly) in Shares)
        {
            args.AddRange(["-virtfs", $"local,path={Escape(hostPath)},mount_tag={tag},security_model=none,multidevs=remap" + (readOnly ? ",readonly=on" : "")]);
        }
        foreach ((string path, string format, bool readOnly) in Disks)
        {
            args.AddRange(["-drive", $"file={Escape(path)},format={format},if=virtio" + (readOnly ? ",readonly=on" : "")]);
        }
        if (SharedMemory)
        {
            string size = MemoryMiB.ToString(System.Globalization.CultureInfo.InvariantCulture) + "M";
            args.AddRange(["-object", $"memory-backend-memfd,id=kitmem,size={size},share=on", "-machine", "memory-backend=kitmem"]);
        }
        args.AddRange(ExtraArguments);
        return args;
    }

    /// <summary>QEMU option values escape a comma by doubling it.</summary>
    internal static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);
}
