using System.Diagnostics;
using System.Text;
using Kit.HyperKit.Memory;
using Kit.HyperKit.Vm;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Boot;

/// <summary>
/// Puts a Linux kernel, its command line and initrd, boot_params and the ACPI tables into guest memory for the 64-bit
/// boot protocol (Documentation/arch/x86/boot.rst), at the places <see cref="MemoryLayout"/> names. It touches
/// memory only: the caller points the boot vCPU at the entry it returns.
/// </summary>
internal sealed class LinuxLoader(GuestMemory memory, ILogger logger)
{
    /// <summary>
    /// Loads a kernel (+ initrd) and returns its 64-bit entry point. A bare vmlinux ELF is loaded as it is (as
    /// Firecracker does). A bzImage whose payload is XZ is decompressed on the host once (cached,
    /// <see cref="KernelCache"/>) and its vmlinux booted, so the guest skips its own decompressor (seconds in a nested
    /// guest); anything else, or KIT_VM_KERNEL_CACHE=0, boots the bzImage and the guest decompresses.
    /// </summary>
    public ulong Load(string kernelPath, string? initrdPath, string cmdline, int cpus)
    {
        KernelElf? elf = null;
        byte[]? elfBytes = null;
        SafeFileHandle? elfFile = null;
        byte[] setupHeader;
        ulong needed;
        ulong entry = MemoryLayout.KernelAddress + 0x200; // a bzImage's startup_64 is 0x200 bytes into the protected-mode kernel
        BzImage? image = null;
        try
        {
            byte[] file;
            if (KernelElf.IsElfFile(kernelPath))
            {
                // A bare vmlinux (as Firecracker boots): no setup header to copy, so boot_params gets a synthetic one.
                elfFile = File.OpenHandle(kernelPath);
                if (!KernelElf.TryRead(elfFile, out elf, out string elfReason))
                {
                    throw new MachineConfigurationException($"{kernelPath}: {elfReason}");
                }
                setupHeader = SetupHeaderFields.Synthetic();
            }
            else
            {
                file = ReadFile(kernelPath, "kernel");
                if (!BzImage.TryParse(file, out image, out string reason))
                {
                    throw new MachineConfigurationException($"{kernelPath}: {reason}");
                }
                setupHeader = image!.SetupHeader.ToArray();
                if (Environment.GetEnvironmentVariable("KIT_VM_KERNEL_CACHE") != "0")
                {
                    (elf, elfFile, elfBytes) = KernelLoader.Decompressed(image, KernelCache.DefaultDirectory(), logger);
                }
                else
                {
                    BootLog.BzImagePath(logger, "KIT_VM_KERNEL_CACHE=0");
                }
            }
            if (elf is not null)
            {
                if (!elf.TryCheckLayout(MemoryLayout.KernelAddress, memory.Size, out string layoutReason))
                {
                    if (image is null)
                    {
                        throw new MachineConfigurationException($"{kernelPath}: {layoutReason}");
                    }
                    // The decompressed kernel can not go where it wants here; the bzImage's own decompressor may cope.
                    BootLog.BzImagePath(logger, $"decompressed kernel not loadable: {layoutReason}");
                    elf = null;
                }
            }
            if (elf is not null)
            {
                (needed, entry) = LoadVmlinux(elf, elfFile, elfBytes, setupHeader, initrdPath, cmdline);
            }
            else
            {
                needed = LoadBzImage(image!);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigurationException($"cannot read kernel {kernelPath}: {e.Message}");
        }
        finally
        {
            elfFile?.Dispose();
        }

        WriteCmdline(cmdline, setupHeader);
        (ulong initrdAddress, ulong initrdSize) = initrdPath is null ? (0UL, 0UL) : LoadInitrd(initrdPath, setupHeader, needed);

        ulong rsdp = AcpiTables.Build(memory.GetSpan(MemoryLayout.AcpiAddress, (int)MemoryLayout.AcpiSize), MemoryLayout.AcpiAddress, cpus);
        BootParams.Build(memory.GetSpan(MemoryLayout.ZeroPageAddress, BootParams.Size), setupHeader, MemoryLayout.CmdlineAddress,
            initrdAddress, initrdSize, E820Map(memory.Size), rsdp);
        // 64-bit entry: startup_64, the vmlinux's e_entry (moved by the KASLR physical delta) or the bzImage's (its
        // decompressor's), 0x200 bytes into the protected-mode kernel.
        return entry;
    }

    /// <summary>The guest's e820 map: low RAM, the reserved legacy hole up to 1 MiB, then RAM to the end.</summary>
    public static E820Entry[] E820Map(ulong memorySize) =>
    [
        new(0, MemoryLayout.LowRamEnd, E820Entry.Ram),
        new(MemoryLayout.LowRamEnd, MemoryLayout.HighRamStart - MemoryLayout.LowRamEnd, E820Entry.Reserved),
        new(MemoryLayout.HighRamStart, memorySize - MemoryLayout.HighRamStart, E820Entry.Ram),
    ];

    /// <summary>
    /// Places a vmlinux: randomized as the bzImage's decompressor would do it (KASLR, docs/hyperkit-boot.md) when its
    /// file carries a relocation table, clear of the initrd that goes at the top of RAM; else where it was linked.
    /// Returns the end of the kernel and its entry (startup_64).
    /// </summary>
    private (ulong Needed, ulong Entry) LoadVmlinux(KernelElf elf, SafeFileHandle? file, byte[]? bytes,
        byte[] setupHeader, string? initrdPath, string cmdline)
    {
        long started = Stopwatch.GetTimestamp();
        KernelPlacement? placement = KernelLoader.PlanKaslr(elf, file, bytes, cmdline,
            SetupHeaderFields.KernelAlignment(setupHeader), KernelLimitBelowInitrd(initrdPath, setupHeader), out byte[] relocs, out string kaslrReason);
        TimeSpan planning = Stopwatch.GetElapsedTime(started);
        ulong physicalDelta = placement?.PhysicalDelta ?? 0;
        if (bytes is not null)
        {
            KernelLoader.Load(elf, bytes, memory, physicalDelta);
        }
        else
        {
            KernelLoader.Load(elf, file!, memory, physicalDelta);
        }
        if (placement is { } p)
        {
            started = Stopwatch.GetTimestamp();
            ulong imageBase = MemoryLayout.KernelLoadPhysicalAddress;
            KernelRelocator.Apply(relocs, elf.Segments, memory.GetSpan(imageBase + physicalDelta, checked((int)(elf.End - imageBase))),
                imageBase, p.VirtualDelta);
            SetupHeaderFields.SetKaslrFlag(setupHeader);
            BootLog.Kaslr(logger, p.PhysicalBase, KernelRelocator.StartKernelMap + p.VirtualBase, planning.TotalMilliseconds,
                Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
        else
        {
            BootLog.NoKaslr(logger, kaslrReason);
        }
        return (elf.End + physicalDelta, elf.Entry + physicalDelta);
    }

    /// <summary>Places a bzImage's protected-mode kernel at 1 MiB for the guest to decompress; returns how far up
    /// the decompressor will reach.</summary>
    private ulong LoadBzImage(BzImage image)
    {
        ulong kernelEnd = MemoryLayout.KernelAddress + Math.Max((ulong)image.ProtectedModeKernel.Length, image.InitSize);
        // The decompressor relocates to 16 MiB (LOAD_PHYSICAL_ADDR) and needs init_size bytes there.
        ulong needed = Math.Max(kernelEnd, MemoryLayout.KernelLoadPhysicalAddress + image.InitSize);
        if (needed > memory.Size)
        {
            throw new MachineConfigurationException($"the kernel needs at least {(needed >> 20) + 1} MiB of guest memory");
        }
        image.ProtectedModeKernel.CopyTo(memory.GetSpan(MemoryLayout.KernelAddress, image.ProtectedModeKernel.Length));
        return needed;
    }

    private void WriteCmdline(string cmdline, ReadOnlySpan<byte> setupHeader)
    {
        byte[] cmd = Encoding.ASCII.GetBytes(cmdline);
        uint cmdlineSize = SetupHeaderFields.CmdlineSize(setupHeader);
        if (cmd.Length >= cmdlineSize || cmd.Length >= MemoryLayout.MaxCmdlineBytes)
        {
            throw new MachineConfigurationException($"kernel command line is {cmd.Length} bytes; this kernel accepts {cmdlineSize - 1}");
        }
        Span<byte> cmdSpan = memory.GetSpan(MemoryLayout.CmdlineAddress, cmd.Length + 1);
        cmd.CopyTo(cmdSpan);
        cmdSpan[^1] = 0;
    }

    /// <summary>
    /// Reads the initrd straight into guest RAM (a managed copy would stay resident and add its size to the VMM's peak
    /// RSS), page-aligned at the top of RAM below initrd_addr_max and clear of the kernel's last byte
    /// (<paramref name="kernelEnd"/>).
    /// </summary>
    private (ulong Address, ulong Size) LoadInitrd(string initrdPath, ReadOnlySpan<byte> setupHeader, ulong kernelEnd)
    {
        try
        {
            using SafeFileHandle handle = File.OpenHandle(initrdPath);
            long length = RandomAccess.GetLength(handle);
            ulong size = (ulong)length;
            if (length > int.MaxValue || InitrdAddress(size, setupHeader, memory.Size) is not { } address || address < kernelEnd)
            {
                throw new MachineConfigurationException($"kernel and initrd ({size >> 20} MiB) do not fit in {memory.Size >> 20} MiB of guest memory");
            }
            BootFile.ReadExactly(handle, memory.GetSpan(address, (int)length), 0);
            return (address, size);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigurationException($"cannot read initrd {initrdPath}: {e.Message}");
        }
    }

    /// <summary>Where an initrd of <paramref name="size"/> bytes goes: page-aligned at the top of RAM below
    /// initrd_addr_max (Documentation/arch/x86/boot.rst); null when it is larger than that.</summary>
    public static ulong? InitrdAddress(ulong size, ReadOnlySpan<byte> setupHeader, ulong memorySize)
    {
        ulong top = Math.Min(memorySize, (ulong)SetupHeaderFields.InitrdAddrMax(setupHeader) + 1);
        return size <= top ? (top - size) & ~0xFFFUL : null;
    }

    /// <summary>Where a randomized kernel must end: below the page the initrd will start at (it goes at the top of
    /// RAM under initrd_addr_max), or the end of RAM without one. 0 (no room: no KASLR) when the initrd can not be
    /// measured; loading it reports why.</summary>
    private ulong KernelLimitBelowInitrd(string? initrdPath, ReadOnlySpan<byte> setupHeader)
    {
        if (initrdPath is null)
        {
            return memory.Size;
        }
        try
        {
            return InitrdAddress((ulong)new FileInfo(initrdPath).Length, setupHeader, memory.Size) ?? 0;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return 0;
        }
    }

    private static byte[] ReadFile(string path, string what)
    {
        try
        {
            return File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new MachineConfigurationException($"cannot read {what} {path}: {e.Message}");
        }
    }
}
