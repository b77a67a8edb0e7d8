using System.Buffers.Binary;
using Kit.HyperKit.Boot;
using Kit.Testing;

namespace Kit.HyperKit.Tests;

/// <summary>Host-side KASLR on the real default guest kernel (Debian's, CONFIG_RANDOMIZE_BASE): its decompressed
/// payload carries vmlinux.relocs after the ELF, and relocating it touches exactly the listed fields.</summary>
[Trait("Tier", "Real")]
public sealed class DebianKernelKaslrTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Relocates_the_Debian_guest_kernel_by_its_own_table()
    {
        GuestImage guest = await GuestImage.GetDefaultAsync(TestContext.Current.CancellationToken);
        byte[] file = File.ReadAllBytes(guest.Kernel);
        Assert.True(BzImage.TryParse(file, out BzImage? image, out string reason), reason);
        Assert.True(KernelLoader.TryDecompress(image!, out byte[]? vmlinux, out KernelElf? elf, out reason), reason);
        uint alignment = SetupHeaderFields.KernelAlignment(image!.SetupHeader);
        output.WriteLine($"vmlinux {vmlinux!.Length} bytes, ELF ends at {elf!.OwnLength}, _end at 0x{elf.End:X}, kernel_alignment 0x{alignment:X}");
        Assert.InRange(alignment, 0x20_0000u, 0x100_0000u);

        // The table: exactly the bytes after the ELF, three zero-terminated groups consuming all of it.
        ReadOnlySpan<byte> table = vmlinux.AsSpan((int)elf.OwnLength);
        Assert.True(KernelRelocator.TryValidate(table, elf.Segments, out KernelRelocator.Counts counts, out reason), reason);
        output.WriteLine($"relocs: {counts}, table {table.Length} bytes");
        Assert.Equal(table.Length / 4, 3 + counts.Relocs32 + counts.Inverse32 + counts.Relocs64);
        Assert.InRange(counts.Relocs32, 1000, 1_000_000);
        Assert.InRange(counts.Relocs64, 1000, 1_000_000);

        // Lay the kernel out as guest RAM from 16 MiB, relocate by a virtual delta, and check every 64-bit field moved
        // by exactly that delta (kernel addresses, and also physical ones such as head_64.S's page-table entries,
        // sym - __START_KERNEL_map) and no byte outside the listed fields changed.
        const ulong Base = KernelRelocator.LoadPhysicalAddress, Delta = 0x1E00_0000;
        var ram = new byte[elf.End - Base];
        foreach (LoadSegment s in elf.Segments)
        {
            vmlinux.AsSpan((int)s.FileOffset, (int)s.FileSize).CopyTo(ram.AsSpan((int)(s.PhysicalAddress - Base)));
        }
        byte[] before = (byte[])ram.Clone();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        Assert.True(KernelRelocator.TryValidate(table, elf.Segments, out _, out reason), reason);
        TimeSpan validate = clock.Elapsed;
        clock.Restart();
        KernelRelocator.Apply(table, elf.Segments, ram, Base, Delta);
        output.WriteLine($"validate {validate.TotalMilliseconds:F1} ms, apply {clock.Elapsed.TotalMilliseconds:F1} ms (second validation; first-call JIT included in apply)");

        var touched = new bool[ram.Length];
        int position = table.Length / 4;
        for (int group = 0; group < 3; group++)
        {
            while (true)
            {
                int word = BinaryPrimitives.ReadInt32LittleEndian(table[(--position * 4)..]);
                if (word == 0)
                {
                    break;
                }
                int at = (int)((ulong)(long)word - KernelRelocator.StartKernelMap - Base);
                int width = group == 2 ? 8 : 4;
                touched.AsSpan(at, width).Fill(true);
                if (group == 2)
                {
                    ulong old = BinaryPrimitives.ReadUInt64LittleEndian(before.AsSpan(at));
                    Assert.Equal(old + Delta, BinaryPrimitives.ReadUInt64LittleEndian(ram.AsSpan(at)));
                }
            }
        }
        int changedOutside = 0;
        for (int i = 0; i < ram.Length; i++)
        {
            if (ram[i] != before[i] && !touched[i])
            {
                changedOutside++;
            }
        }
        Assert.Equal(0, changedOutside);
        Assert.NotEqual(before, ram);
        // Relocating back by -delta restores the image byte for byte.
        KernelRelocator.Apply(table, elf.Segments, ram, Base, unchecked(0UL - Delta));
        Assert.Equal(before, ram);

        // The plan kit vm run makes: randomized below an initrd limit, aligned, and none with nokaslr.
        var physical = new HashSet<ulong>();
        for (int i = 0; i < 8; i++)
        {
            KernelPlacement? plan = KernelLoader.PlanKaslr(elf, null, vmlinux, "console=ttyS0", alignment, 480UL << 20, out byte[] relocs, out reason);
            Assert.True(plan.HasValue, reason);
            Assert.Equal(table.Length, relocs.Length);
            Assert.Equal(0UL, plan.Value.PhysicalBase % alignment);
            Assert.True(elf.End + plan.Value.PhysicalDelta <= 480UL << 20);
            physical.Add(plan.Value.PhysicalBase ^ (plan.Value.VirtualBase << 1));
        }
        Assert.True(physical.Count > 1, "eight plans all chose the same place");
        Assert.Null(KernelLoader.PlanKaslr(elf, null, vmlinux, "console=ttyS0 nokaslr", alignment, 480UL << 20, out _, out reason));
        Assert.Contains("nokaslr", reason, StringComparison.Ordinal);
    }
}
