using Kit.Cli;
using Kit.Cli.Vm;
using Kit.HyperKit.Vm;

namespace Kit.Tests;

/// <summary>The --accel tcg command line and exit mapping (pure; TcgTests boot the real thing).</summary>
public sealed class QemuCommandLineTests
{
    private static VmSpec Spec() => new()
    {
        Kernel = new FileInfo("/k/vmlinuz"),
        Initrd = new FileInfo("/k/initrd,gz"),
        Cmdline = "console=ttyS0 panic=-1",
        MemoryBytes = 768UL << 20,
        Cpus = 2,
    };

    [Fact]
    public void No_default_devices_and_plain_ram_without_vhost_user_devices()
    {
        List<string> args = QemuCommandLine.Build(Spec(), new QemuCommandLine.Wiring(QmpFd: 7));

        Assert.Contains("-nodefaults", args);
        Assert.Equal("tcg", args[args.IndexOf("-accel") + 1]);
        Assert.Equal("2", args[args.IndexOf("-smp") + 1]);
        Assert.Equal("768M", args[args.IndexOf("-m") + 1]);
        Assert.Equal("pc", args[args.IndexOf("-machine") + 1]);
        Assert.DoesNotContain(args, a => a.StartsWith("memory-backend-memfd", StringComparison.Ordinal));
        Assert.Equal("console=ttyS0 panic=-1", args[args.IndexOf("-append") + 1]);
        Assert.Contains("socket,id=qmp,fd=7", args);
        Assert.Contains("-no-reboot", args);
        // A comma in a path is doubled in QEMU's option syntax; plain arguments such as -initrd stay as they are.
        Assert.Equal("/k/initrd,gz", args[args.IndexOf("-initrd") + 1]);
        Assert.DoesNotContain(args, a => a.Contains("virtio-net", StringComparison.Ordinal));
    }

    [Fact]
    public void Net_and_vsock_are_vhost_user_and_net_has_no_msix_vectors()
    {
        VmSpec spec = Spec();
        List<string> args = QemuCommandLine.Build(spec, new QemuCommandLine.Wiring(7, "/run/x/net.sock", "/run/x/v,sock"));

        // vhost-user backends map guest RAM: a shared memfd of the asked size.
        Assert.Contains("memory-backend-memfd,id=ram,size=768M,share=on", args);
        Assert.Equal("pc,memory-backend=ram", args[args.IndexOf("-machine") + 1]);
        Assert.Contains("socket,id=net,path=/run/x/net.sock", args);
        Assert.Contains("vhost-user,id=net0,chardev=net", args);
        Assert.Contains(args, a => a.StartsWith("virtio-net-pci,netdev=net0,vectors=0", StringComparison.Ordinal));
        Assert.Contains("socket,id=vsock,path=/run/x/v,,sock", args);
        Assert.Contains("vhost-user-vsock-pci,chardev=vsock", args);
    }

    [Fact]
    public void Shares_are_mapped_unless_trusted_and_relays_are_refused()
    {
        VmSpec spec = Spec();
        spec.Shares.Add(new ShareOptions("a", "/srv/a"));
        spec.Shares.Add(new ShareOptions("b", "/srv/b,c", ReadOnly: true, Trusted: true));
        List<string> args = QemuCommandLine.Build(spec, new QemuCommandLine.Wiring(7));

        Assert.Contains("local,id=fs0,path=/srv/a,security_model=mapped-xattr", args);
        Assert.Contains("local,id=fs1,path=/srv/b,,c,security_model=passthrough,readonly=on", args);
        Assert.Contains("virtio-9p-pci,fsdev=fs1,mount_tag=b", args);

        spec.Shares.Add(new ShareOptions("d", "unix:/run/d.sock"));
        CliException e = Assert.Throws<CliException>(() => QemuCommandLine.Build(spec, new QemuCommandLine.Wiring(7)));
        Assert.Contains("--accel kvm", e.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(0, "guest-shutdown", false, MachineExitKind.PowerOff)]
    [InlineData(0, "guest-reset", false, MachineExitKind.Reset)]
    [InlineData(0, "guest-reset", true, MachineExitKind.Panic)]
    [InlineData(0, "guest-panic", false, MachineExitKind.Panic)]
    [InlineData(0, "host-signal", false, MachineExitKind.Error)]
    [InlineData(1, null, false, MachineExitKind.Error)]
    public void Qemu_endings_map_to_kit_exit_codes(int status, string? reason, bool panicked, MachineExitKind expected)
    {
        Assert.Equal(expected, QemuRunner.ExitOf(status, reason, panicked).Kind);
    }

    [Theory]
    [InlineData(null, "Auto")]
    [InlineData("auto", "Auto")]
    [InlineData("kvm", "Kvm")]
    [InlineData("tcg", "Tcg")]
    public void Accel_parses(string? text, string expected) => Assert.Equal(expected, Accelerators.Parse(text).ToString());

    [Fact]
    public void Accel_rejects_other_words() =>
        Assert.Equal("--accel wants auto, kvm or tcg, got \"hvf\"", Assert.Throws<CliException>(() => Accelerators.Parse("hvf")).Message);
}
