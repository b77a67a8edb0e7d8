using Kit.HyperKit.Boot;
using Kit.Testing;

namespace Kit.HyperKit.Tests;

/// <summary>The host half of booting the decompressed kernel, on the real default guest kernel (Debian's bzImage,
/// XZ payload): no KVM needed.</summary>
[Trait("Tier", "Real")]
public sealed class DebianKernelTests
{
    [Fact]
    public async Task Decompresses_the_Debian_guest_kernel_into_a_loadable_vmlinux()
    {
        GuestImage guest = await GuestImage.GetDefaultAsync(TestContext.Current.CancellationToken);
        byte[] file = File.ReadAllBytes(guest.Kernel);
        Assert.True(BzImage.TryParse(file, out BzImage? image, out string reason), reason);
        Assert.True(KernelPayload.TryGet(image!, out KernelPayload payload, out reason), reason);
        Assert.Equal(KernelCompression.Xz, payload.Compression);

        Assert.True(KernelLoader.TryDecompress(image!, out byte[]? vmlinux, out KernelElf? elf, out reason), reason);
        Assert.Equal((int)payload.UncompressedSize, vmlinux!.Length);
        // startup_64 at LOAD_PHYSICAL_ADDR (16 MiB); text, data, per-CPU data and init/bss all above it.
        Assert.Equal(0x100_0000UL, elf!.Entry);
        Assert.Equal(0x100_0000UL, elf.Segments[0].PhysicalAddress);
        Assert.InRange(elf.Segments.Count, 3, 5);
        Assert.All(elf.Segments, s => Assert.True(s.PhysicalAddress >= 0x100_0000));
        Assert.True(elf.TryCheckLayout(0x10_0000, 512UL << 20, out reason), reason);
        Assert.InRange(elf.End, 32UL << 20, 256UL << 20);
        Assert.False(elf.TryCheckLayout(0x10_0000, 32UL << 20, out _)); // too little RAM is refused, not loaded

        // What the cache stores must come back as the same kernel.
        string directory = Path.Combine(Path.GetTempPath(), $"kit-debian-kcache-{Guid.NewGuid():N}");
        try
        {
            var cache = new KernelCache(directory);
            string key = KernelCache.Key(file);
            Assert.True(cache.TryStore(key, vmlinux, out reason), reason);
            Assert.True(cache.TryOpen(key, payload.UncompressedSize, out Microsoft.Win32.SafeHandles.SafeFileHandle? handle, out KernelElf? cached, out reason), reason);
            using (handle)
            {
                Assert.Equal(elf.Segments, cached!.Segments);
            }
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
