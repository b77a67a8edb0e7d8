using System.Buffers.Binary;
using Kit.HyperKit.Boot;

namespace Kit.HyperKit.Tests;

public sealed class KernelElfTests
{
    /// <summary>An x86-64 ET_EXEC ELF with the given PT_LOAD segments (paddr, filesz, memsz): program headers at
    /// 64, segment data from 0x1000 on, each filled with its index + 1.</summary>
    internal static byte[] FakeElf(ulong entry, params (ulong Paddr, ulong FileSize, ulong MemSize)[] segments)
    {
        ulong dataStart = 0x1000;
        ulong total = dataStart;
        foreach (var s in segments)
        {
            total += s.FileSize;
        }
        var file = new byte[total];
        file[0] = 0x7F;
        file[1] = (byte)'E';
        file[2] = (byte)'L';
        file[3] = (byte)'F';
        file[4] = 2;
        file[5] = 1;
        file[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(16), 2);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(18), 62);
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(24), entry);
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(32), 64);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(54), 56);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(56), (ushort)(segments.Length + 1));
        ulong offset = dataStart;
        for (int i = 0; i < segments.Length; i++)
        {
            Span<byte> ph = file.AsSpan(64 + 56 * i, 56);
            BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], offset);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], 0xFFFF_FFFF_8000_0000 + segments[i].Paddr);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], segments[i].Paddr);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], segments[i].FileSize);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], segments[i].MemSize);
            file.AsSpan((int)offset, (int)segments[i].FileSize).Fill((byte)(i + 1));
            offset += segments[i].FileSize;
        }
        // A PT_NOTE after the loads, which the loader must skip.
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(64 + 56 * segments.Length), 4);
        return file;
    }

    private static bool Parse(byte[] file, out KernelElf? elf, out string reason) =>
        KernelElf.TryParse(file.AsSpan(0, Math.Min(file.Length, KernelElf.HeaderBytes)), (ulong)file.Length, out elf, out reason);

    [Fact]
    public void Parses_the_load_segments_and_entry()
    {
        byte[] file = FakeElf(0x100_0000, (0x100_0000, 0x2000, 0x2000), (0x100_4000, 0x1000, 0x3000));
        Assert.True(Parse(file, out KernelElf? elf, out string reason), reason);
        Assert.Equal(0x100_0000UL, elf!.Entry);
        Assert.Equal(2, elf.Segments.Count);
        Assert.Equal(new LoadSegment(0x3000, 0x1000, 0x100_4000, 0x3000), elf.Segments[1]);
        Assert.Equal(0x100_7000UL, elf.End);
        Assert.True(elf.TryCheckLayout(0x10_0000, 32 << 20, out reason), reason);
    }

    [Fact]
    public void Own_length_ends_at_the_section_headers_or_the_last_segment_byte()
    {
        byte[] elfOnly = FakeElf(0x100_0000, (0x100_0000, 0x2000, 0x2000));
        byte[] file = [.. elfOnly, .. new byte[0x100]]; // a relocation table after the ELF
        Assert.True(Parse(file, out KernelElf? elf, out string reason), reason);
        Assert.Equal((ulong)elfOnly.Length, elf!.OwnLength);

        // A section header table at 0x3000 (4 x 64 bytes) ends the ELF there.
        file = [.. elfOnly, .. new byte[0x200]];
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(40), 0x3000);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(58), 64);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(60), 4);
        Assert.True(Parse(file, out elf, out reason), reason);
        Assert.Equal(0x3100UL, elf!.OwnLength);

        // One claimed past the file's end: the ELF owns the whole file (no table).
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(40), 0xFFFF_FFFF_FFFF_0000);
        Assert.True(Parse(file, out elf, out reason), reason);
        Assert.Equal((ulong)file.Length, elf!.OwnLength);
    }

    [Theory]
    [InlineData("magic", "not an ELF")]
    [InlineData("class32", "ELF64")]
    [InlineData("bigendian", "ELF64")]
    [InlineData("dyn", "x86-64 executable")]
    [InlineData("arm", "x86-64 executable")]
    [InlineData("phentsize", "program header")]
    [InlineData("phnum", "program header")]
    [InlineData("phoff", "first")]
    [InlineData("truncated", "past the end of the file")]
    [InlineData("filesz", "p_filesz")]
    [InlineData("overlap", "overlap")]
    [InlineData("entry", "entry point")]
    [InlineData("entry-in-bss", "entry point")]
    [InlineData("huge", "beyond any guest memory")]
    [InlineData("noload", "no loadable")]
    public void Refuses_hostile_files_with_a_reason(string defect, string expected)
    {
        byte[] file = FakeElf(0x100_0000, (0x100_0000, 0x2000, 0x4000), (0x110_0000, 0x1000, 0x1000));
        Span<byte> ph0 = file.AsSpan(64, 56), ph1 = file.AsSpan(120, 56);
        switch (defect)
        {
            case "magic": file[1] = (byte)'X'; break;
            case "class32": file[4] = 1; break;
            case "bigendian": file[5] = 2; break;
            case "dyn": file[16] = 3; break;
            case "arm": file[18] = 40; break;
            case "phentsize": file[54] = 32; break;
            case "phnum": BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(56), 0); break;
            case "phoff": BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(32), 4000); break;
            case "truncated": file = file[..0x2800]; break;
            case "filesz": BinaryPrimitives.WriteUInt64LittleEndian(ph1[32..], 0x2000); BinaryPrimitives.WriteUInt64LittleEndian(ph1[8..], 0); break;
            case "overlap": BinaryPrimitives.WriteUInt64LittleEndian(ph1[24..], 0x100_3000); break;
            case "entry": BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(24), 0x200_0000); break;
            case "entry-in-bss": BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(24), 0x100_3000); break;
            case "huge": BinaryPrimitives.WriteUInt64LittleEndian(ph1[40..], ulong.MaxValue - 5); BinaryPrimitives.WriteUInt64LittleEndian(ph1[24..], ulong.MaxValue - 5); break;
            case "noload": BinaryPrimitives.WriteUInt32LittleEndian(ph0, 4); BinaryPrimitives.WriteUInt32LittleEndian(ph1, 4); break;
        }
        Assert.False(Parse(file, out KernelElf? elf, out string reason));
        Assert.Null(elf);
        Assert.Contains(expected, reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Refuses_segments_outside_RAM_or_over_the_loaders_structures()
    {
        byte[] low = FakeElf(0x8000, (0x8000, 0x1000, 0x1000));
        Assert.True(Parse(low, out KernelElf? elf, out string reason), reason);
        Assert.False(elf!.TryCheckLayout(0x10_0000, 512 << 20, out reason));
        Assert.Contains("loader's structures", reason, StringComparison.Ordinal);

        byte[] high = FakeElf(0x100_0000, (0x100_0000, 0x1000, 0x3000_0000));
        Assert.True(Parse(high, out elf, out reason), reason);
        Assert.False(elf!.TryCheckLayout(0x10_0000, 512 << 20, out reason));
        Assert.Contains("MiB of guest memory", reason, StringComparison.Ordinal);
    }

    [Fact]
    public void Never_throws_on_random_or_cut_input()
    {
        var random = new Random(5);
        byte[] valid = FakeElf(0x100_0000, (0x100_0000, 0x2000, 0x4000), (0x110_0000, 0x1000, 0x1000));
        for (int i = 0; i < 2000; i++)
        {
            byte[] file = (byte[])valid.Clone();
            for (int flips = random.Next(1, 6); flips > 0; flips--)
            {
                file[random.Next(0, 0x100)] = (byte)random.Next(256);
            }
            file = file[..random.Next(0, file.Length + 1)];
            if (Parse(file, out KernelElf? elf, out _))
            {
                // Whatever it accepted is bounded by the file.
                Assert.All(elf!.Segments, s => Assert.True(s.FileOffset + s.FileSize <= (ulong)file.Length));
                _ = elf.TryCheckLayout(0x10_0000, 512 << 20, out _);
            }
        }
    }

    [Fact]
    public void Loads_segments_from_a_file_and_zeroes_the_tail()
    {
        byte[] file = FakeElf(0x100_0000, (0x100_0000, 0x2000, 0x4000), (0x110_0000, 0x1000, 0x1000));
        string path = Path.Combine(Path.GetTempPath(), $"kit-elf-{Guid.NewGuid():N}");
        File.WriteAllBytes(path, file);
        try
        {
            using var memory = new Memory.GuestMemory(32 << 20);
            memory.GetSpan(0x100_3000, 16).Fill(0xEE); // stale bytes the zeroed tail must clear
            using Microsoft.Win32.SafeHandles.SafeFileHandle handle = File.OpenHandle(path);
            Assert.True(KernelElf.TryRead(handle, out KernelElf? elf, out string reason), reason);
            KernelLoader.Load(elf!, handle, memory);
            Assert.All(memory.GetSpan(0x100_0000, 0x2000).ToArray(), b => Assert.Equal(1, b));
            Assert.All(memory.GetSpan(0x100_2000, 0x2000).ToArray(), b => Assert.Equal(0, b));
            Assert.All(memory.GetSpan(0x110_0000, 0x1000).ToArray(), b => Assert.Equal(2, b));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void Synthetic_setup_header_carries_what_boot_params_needs()
    {
        byte[] header = SetupHeaderFields.Synthetic();
        Assert.Equal(2048u, SetupHeaderFields.CmdlineSize(header));
        Assert.Equal(0x7FFF_FFFFu, SetupHeaderFields.InitrdAddrMax(header));
        byte[] page = new byte[BootParams.Size];
        BootParams.Build(page, header, 0x20000, 0x1000_0000, 0x1000, [new E820Entry(0, 0x9_FC00, E820Entry.Ram)], 0xE0000);
        Assert.Equal(0xAA55, BinaryPrimitives.ReadUInt16LittleEndian(page.AsSpan(0x1FE)));
        Assert.Equal("HdrS"u8.ToArray(), page.AsSpan(0x202, 4).ToArray());
        Assert.Equal(0x020F, BinaryPrimitives.ReadUInt16LittleEndian(page.AsSpan(0x206)));
        Assert.Equal(0x20000u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x228)));
        Assert.Equal(0x1000_0000u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x218)));
    }
}
