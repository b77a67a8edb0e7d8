using Kit.HyperKit.Boot;
using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Tests;

public sealed class KernelCacheTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), $"kit-kcache-{Guid.NewGuid():N}");

    public void Dispose()
    {
        if (Directory.Exists(_directory))
        {
            Directory.Delete(_directory, recursive: true);
        }
    }

    private static byte[] Elf() => KernelElfTests.FakeElf(0x100_0000, (0x100_0000, 0x2000, 0x2000));

    [Fact]
    public void Stores_and_reopens_a_kernel_by_content_key()
    {
        var cache = new KernelCache(_directory);
        byte[] vmlinux = Elf();
        string key = KernelCache.Key("some bzImage"u8);
        Assert.Equal(32, key.Length);
        Assert.NotEqual(key, KernelCache.Key("some bzImagf"u8));
        Assert.False(cache.TryOpen(key, (ulong)vmlinux.Length, out _, out _, out string reason));
        Assert.Equal("not cached", reason);

        Assert.True(cache.TryStore(key, vmlinux, out reason), reason);
        Assert.Equal([cache.PathFor(key)], Directory.GetFiles(_directory)); // no temporary file left behind
        Assert.True(cache.TryOpen(key, (ulong)vmlinux.Length, out SafeFileHandle? handle, out KernelElf? elf, out reason), reason);
        using (handle)
        {
            Assert.Equal(0x100_0000UL, elf!.Entry);
        }
    }

    [Theory]
    [InlineData("short")]
    [InlineData("garbage")]
    [InlineData("length")]
    public void Deletes_a_corrupt_or_short_entry_so_it_is_rebuilt(string defect)
    {
        var cache = new KernelCache(_directory);
        byte[] vmlinux = Elf();
        string key = KernelCache.Key("image"u8);
        Directory.CreateDirectory(_directory);
        byte[] bad = defect switch
        {
            "short" => vmlinux[..0x1800],          // cut inside the segment
            "garbage" => new byte[vmlinux.Length], // right length, no ELF
            _ => [.. vmlinux, 0],                  // valid ELF, not the size the bzImage recorded
        };
        File.WriteAllBytes(cache.PathFor(key), bad);

        Assert.False(cache.TryOpen(key, (ulong)vmlinux.Length, out SafeFileHandle? handle, out KernelElf? elf, out string reason));
        Assert.Null(handle);
        Assert.Null(elf);
        Assert.NotEqual("not cached", reason);
        Assert.False(File.Exists(cache.PathFor(key)));

        Assert.True(cache.TryStore(key, vmlinux, out reason), reason);
        Assert.True(cache.TryOpen(key, (ulong)vmlinux.Length, out handle, out _, out reason), reason);
        handle!.Dispose();
    }

    [Fact]
    public void Keeps_only_the_newest_entries()
    {
        var cache = new KernelCache(_directory, keep: 2);
        byte[] vmlinux = Elf();
        for (int i = 0; i < 4; i++)
        {
            string key = KernelCache.Key([(byte)i]);
            Assert.True(cache.TryStore(key, vmlinux, out string reason), reason);
            File.SetLastWriteTimeUtc(cache.PathFor(key), DateTime.UtcNow.AddMinutes(i - 10));
        }
        Assert.Equal(new[] { cache.PathFor(KernelCache.Key([2])), cache.PathFor(KernelCache.Key([3])) }.Order(), Directory.GetFiles(_directory).Order());
        string newest = KernelCache.Key([9]);
        Assert.True(cache.TryStore(newest, vmlinux, out _));
        string[] left = Directory.GetFiles(_directory);
        Assert.Equal(2, left.Length);
        Assert.Contains(cache.PathFor(newest), left);
        Assert.Contains(cache.PathFor(KernelCache.Key([3])), left);
    }

    [Fact]
    public void An_unwritable_directory_is_reported_not_thrown()
    {
        string file = Path.Combine(Path.GetTempPath(), $"kit-kcache-file-{Guid.NewGuid():N}");
        File.WriteAllText(file, "not a directory");
        try
        {
            var cache = new KernelCache(Path.Combine(file, "sub"));
            Assert.False(cache.TryStore("k", Elf(), out string reason));
            Assert.NotEmpty(reason);
            Assert.False(cache.TryOpen("k", 1, out _, out _, out _));
        }
        finally
        {
            File.Delete(file);
        }
    }
}
