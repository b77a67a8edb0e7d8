using System.Globalization;
using Kit.Cli.Commands;
using Kit.HyperKit.Vm;

namespace Kit.Cli.Vm;

/// <summary>
/// The qemu-system-x86_64 command line for a <see cref="VmSpec"/> under <c>--accel tcg</c>: the same kernel, initrd,
/// command line, memory, vCPUs and disks as under kvm; the console on QEMU's stdio; QMP on a descriptor kit hands down
/// (a socketpair); Kit's devices over vhost-user sockets. Pure: it only builds the argument list.
/// </summary>
internal static class QemuCommandLine
{
    /// <summary>Debian's package for the binary, named when it is missing.</summary>
    public const string Binary = "qemu-system-x86_64", Package = "qemu-system-x86";

    /// <summary>Descriptors and device choices the command line refers to.</summary>
    /// <param name="QmpFd">The child's end of the QMP socketpair.</param>
    /// <param name="NetSocket">
    /// The vhost-user socket of Kit's virtio-net (with any of its backends: VPNKit, VMN3T, TAP), or null for no network
    /// device.
    /// </param>
    /// <param name="VsockSocket">The vhost-user socket of Kit's virtio-vsock, or null.</param>
    public sealed record Wiring(int QmpFd, string? NetSocket = null, string? VsockSocket = null);

    public static List<string> Build(VmSpec spec, Wiring wiring)
    {
        string memory = (spec.MemoryBytes >> 20).ToString(CultureInfo.InvariantCulture) + "M";
        var args = new List<string>
        {
            // No default devices (a NIC on QEMU's own slirp, VGA, a monitor on stdio); nothing but what is asked for.
            "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", "tcg", "-cpu", "max",
            "-smp", spec.Cpus.ToString(CultureInfo.InvariantCulture),
            "-m", memory,
            // A reset ends QEMU (as kit's own VMM ends on one), and QMP's SHUTDOWN event says which it was.
            "-no-reboot",
            "-kernel", spec.Kernel.FullName,
            "-append", spec.Cmdline,
            "-chardev", "stdio,id=console,signal=off",
            "-serial", "chardev:console",
            "-chardev", $"socket,id=qmp,fd={wiring.QmpFd}",
            "-mon", "chardev=qmp,mode=control",
        };
        if (wiring.NetSocket is not null || wiring.VsockSocket is not null)
        {
            // vhost-user needs guest RAM the backend can map: a memfd shared with it (vhost-user.rst, "Memory
            // regions"). Only then: shared RAM costs TCG about 0.2 s of boot (bench/tcg.sh, docs/benchmarks.md).
            args.AddRange(["-object", $"memory-backend-memfd,id=ram,size={memory},share=on", "-machine", "pc,memory-backend=ram"]);
        }
        else
        {
            args.AddRange(["-machine", "pc"]);
        }
        if (spec.Initrd is { } initrd)
        {
            args.AddRange(["-initrd", initrd.FullName]);
        }
        if (spec.Rng)
        {
            args.AddRange(["-object", "rng-random,id=rng,filename=/dev/urandom", "-device", "virtio-rng-pci,rng=rng"]);
        }
        for (int i = 0; i < spec.Disks.Count; i++)
        {
            DiskOptions disk = spec.Disks[i];
            args.AddRange(["-drive", $"file={Escape(disk.Path)},format=raw,if=none,id=disk{i}" + (disk.ReadOnly ? ",readonly=on" : ""),
                "-device", $"virtio-blk-pci,drive=disk{i}"]);
        }
        string mac = spec.Mac is { } m ? $",mac={string.Join(':', m.Select(b => b.ToString("x2", CultureInfo.InvariantCulture)))}" : "";
        if (wiring.NetSocket is { } netSocket)
        {
            // Debian 12's QEMU 7.2 segfaults under TCG when a vhost-user-net device starts with MSI-X vectors
            // (vhost_net_start -> msix_set_vector_notifiers); vectors=0 leaves it on INTx, which works.
            args.AddRange(["-chardev", $"socket,id=net,path={Escape(netSocket)}", "-netdev", "vhost-user,id=net0,chardev=net",
                "-device", $"virtio-net-pci,netdev=net0,vectors=0{mac}"]);
        }
        if (wiring.VsockSocket is { } vsockSocket)
        {
            args.AddRange(["-chardev", $"socket,id=vsock,path={Escape(vsockSocket)}", "-device", "vhost-user-vsock-pci,chardev=vsock"]);
        }
        for (int i = 0; i < spec.Shares.Count; i++)
        {
            ShareOptions share = spec.Shares[i];
            if (share.IsServer)
            {
                throw new CliException($"--share {share.Tag}={share.Target}: a relay to a 9P server needs Kit's own virtio-9p (--accel kvm); under tcg, mount the server over the network (mount -t 9p -o trans=tcp)");
            }
            // QEMU's own virtio-9p for a host directory. mapped-xattr keeps the guest's ownership and mode bits in
            // extended attributes instead of applying them, so a guest cannot plant setuid or root-owned files (as
            // HostFs does under kvm); a share marked trusted applies them (passthrough).
            string model = share.Trusted ? "passthrough" : "mapped-xattr";
            args.AddRange(["-fsdev", $"local,id=fs{i},path={Escape(share.Target)},security_model={model}" + (share.ReadOnly ? ",readonly=on" : ""),
                "-device", $"virtio-9p-pci,fsdev=fs{i},mount_tag={share.Tag}"]);
        }
        return args;
    }

    /// <summary>QEMU's option syntax: a comma inside a value is written twice.</summary>
    public static string Escape(string value) => value.Replace(",", ",,", StringComparison.Ordinal);
}
