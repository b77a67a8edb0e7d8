using System.Buffers.Binary;
using System.Text;
using Kit.HyperKit.Boot;
using Kit.HyperKit.Devices.Power;

namespace Kit.HyperKit.Tests;

public sealed class BootTests
{
    /// <summary>A synthetic bzImage header: protocol 2.15, 64-bit entry, 2 setup sectors, payload "KERNEL".</summary>
    private static byte[] FakeBzImage(ushort version = 0x020F, ushort xloadflags = 1, byte loadflags = 1)
    {
        byte[] file = new byte[3 * 512 + 6];
        file[0x1F1] = 2;
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(0x1FE), 0xAA55);
        file[0x200] = 0xEB;
        file[0x201] = 0x66; // jump over the header to 0x268
        Encoding.ASCII.GetBytes("HdrS", file.AsSpan(0x202));
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(0x206), version);
        file[0x211] = loadflags;
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x22C), 0x7FFFFFFF);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(0x236), xloadflags);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x238), 2047);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x260), 0x100000);
        Encoding.ASCII.GetBytes("KERNEL", file.AsSpan(3 * 512));
        return file;
    }

    [Fact]
    public void ParsesAValidImage()
    {
        Assert.True(BzImage.TryParse(FakeBzImage(), out BzImage? image, out string reason), reason);
        Assert.Equal(3 * 512, image!.SetupBytes);
        Assert.Equal("KERNEL"u8.ToArray(), image.ProtectedModeKernel.ToArray());
        Assert.Equal(2047u, image.CmdlineSize);
        Assert.Equal(0x7FFFFFFFu, image.InitrdAddrMax);
        Assert.Equal(0x268 - 0x1F1, image.SetupHeader.Length);
    }

    [Theory]
    [InlineData("small")]
    [InlineData("signature")]
    [InlineData("magic")]
    [InlineData("old")]
    [InlineData("no64")]
    [InlineData("zimage")]
    [InlineData("setup")]
    public void RefusesBadImagesWithAReason(string defect)
    {
        byte[] file = defect switch
        {
            "small" => new byte[100],
            "old" => FakeBzImage(version: 0x020A),
            "no64" => FakeBzImage(xloadflags: 0),
            "zimage" => FakeBzImage(loadflags: 0),
            _ => FakeBzImage(),
        };
        if (defect == "signature")
        {
            file[0x1FE] = 0;
        }
        if (defect == "magic")
        {
            file[0x202] = (byte)'X';
        }
        if (defect == "setup")
        {
            file[0x1F1] = 200;
        }
        Assert.False(BzImage.TryParse(file, out _, out string reason));
        Assert.NotEmpty(reason);
    }

    [Fact]
    public void RandomBytesNeverThrow()
    {
        var random = new Random(5);
        for (int i = 0; i < 2000; i++)
        {
            byte[] file = FakeBzImage();
            int flips = random.Next(1, 8);
            for (int f = 0; f < flips; f++)
            {
                file[0x1F0 + random.Next(0x80)] = (byte)random.Next(256);
            }
            if (BzImage.TryParse(file, out BzImage? image, out _))
            {
                Assert.True(image!.SetupBytes < file.Length);
                _ = image.SetupHeader.Length;
            }
        }
    }

    [Fact]
    public void ZeroPageCarriesCmdlineInitrdAndE820()
    {
        Assert.True(BzImage.TryParse(FakeBzImage(), out BzImage? image, out _));
        byte[] page = new byte[BootParams.Size];
        E820Entry[] e820 = [new(0, 0x9FC00, E820Entry.Ram), new(0x100000, 0x1FF00000, E820Entry.Ram)];
        BootParams.Build(page, image!, 0x20000, 0x1FE00000, 0x123456, e820, 0xE0000);
        Assert.Equal(0xFF, page[0x210]);                       // type_of_loader
        Assert.Equal(1, page[0x211] & 1);                       // LOADED_HIGH
        Assert.Equal(0x20000u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x228)));
        Assert.Equal(0x1FE00000u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x218)));
        Assert.Equal(0x123456u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x21C)));
        Assert.Equal(0xE0000UL, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x70)));
        Assert.Equal(2, page[0x1E8]);
        Assert.Equal(0x100000UL, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x2D0 + 20)));
        Assert.Equal(0x1FF00000UL, BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(0x2D0 + 28)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x2D0 + 36)));
        Assert.Equal(0x53726448u, BinaryPrimitives.ReadUInt32LittleEndian(page.AsSpan(0x202))); // header copied
    }

    [Fact]
    public void AcpiTablesHaveValidChecksumsAndLinks()
    {
        byte[] region = new byte[0x10000];
        ulong rsdp = AcpiTables.Build(region, 0xE0000, 3);
        Assert.Equal(0xE0000UL, rsdp);
        Assert.Equal("RSD PTR ", Encoding.ASCII.GetString(region, 0, 8));
        Assert.Equal(0, Sum(region.AsSpan(0, 20)));
        Assert.Equal(0, Sum(region.AsSpan(0, 36)));
        int xsdt = (int)(BinaryPrimitives.ReadUInt64LittleEndian(region.AsSpan(24)) - 0xE0000);
        Span<byte> Table(int at) => region.AsSpan(at, (int)BinaryPrimitives.ReadUInt32LittleEndian(region.AsSpan(at + 4)));
        Assert.Equal("XSDT", Encoding.ASCII.GetString(region, xsdt, 4));
        Assert.Equal(0, Sum(Table(xsdt)));
        int fadt = (int)(BinaryPrimitives.ReadUInt64LittleEndian(region.AsSpan(xsdt + 36)) - 0xE0000);
        int madt = (int)(BinaryPrimitives.ReadUInt64LittleEndian(region.AsSpan(xsdt + 44)) - 0xE0000);
        Assert.Equal("FACP", Encoding.ASCII.GetString(region, fadt, 4));
        Assert.Equal(0, Sum(Table(fadt)));
        Assert.Equal(AcpiTables.Pm1aControlPort, BinaryPrimitives.ReadUInt32LittleEndian(region.AsSpan(fadt + 64)));
        int dsdt = (int)(BinaryPrimitives.ReadUInt64LittleEndian(region.AsSpan(fadt + 140)) - 0xE0000);
        Assert.Equal("DSDT", Encoding.ASCII.GetString(region, dsdt, 4));
        Assert.Equal(0, Sum(Table(dsdt)));
        Assert.True(Table(dsdt).IndexOf("_S5_"u8) > 0);
        Assert.Equal("APIC", Encoding.ASCII.GetString(region, madt, 4));
        Assert.Equal(0, Sum(Table(madt)));
        // Three enabled local APIC entries with ids 0, 1, 2.
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(0, region[madt + 44 + 8 * i]);
            Assert.Equal(i, region[madt + 44 + 8 * i + 3]);
        }
    }

    [Fact]
    public void DsdtPackageLengthsAreConsistent()
    {
        byte[] aml = AcpiTables.DsdtAml();
        // _S5 package: PkgLength counts from itself to the end of the package.
        Assert.Equal(0x12, aml[5]);
        Assert.Equal(8, aml[6]); // NumElements + 2 BytePrefix values + 2 Zeros + the length byte itself
        Assert.Equal(aml.Length - 15, aml[15]); // scope PkgLength runs to the end of the AML
        Assert.Equal(aml.Length - 22, aml[22]); // device PkgLength runs to the end of the AML
    }

    private static byte Sum(ReadOnlySpan<byte> bytes)
    {
        byte s = 0;
        foreach (byte b in bytes)
        {
            s += b;
        }
        return s;
    }

    [Fact]
    public void PmControlSleepEnablePowersOff()
    {
        var events = new List<PowerEvent>();
        var pm = new AcpiPmDevice(0x600, 0x604, events.Add);
        Span<byte> d = stackalloc byte[2];
        pm.Read(0x604, d);
        Assert.Equal(1, d[0] & 1); // SCI_EN: already in ACPI mode
        pm.Write(0x604, [0x00, 0x14]); // SLP_TYP=5 without SLP_EN
        Assert.Empty(events);
        pm.Write(0x604, [0x00, 0x34]); // with SLP_EN
        Assert.Equal([PowerEvent.PowerOff], events);
        pm.Read(0x604, d);
        Assert.Equal(0, d[1] & 0x20); // SLP_EN reads as zero
    }

    [Fact]
    public void KeyboardControllerResetCommandResets()
    {
        var events = new List<PowerEvent>();
        var kbd = new I8042Device(events.Add);
        Span<byte> status = stackalloc byte[1];
        kbd.Read(0x64, status);
        Assert.Equal(0, status[0] & 2); // input buffer empty
        kbd.Write(0x64, [0xAA]);
        Assert.Empty(events);
        kbd.Write(0x64, [0xFE]);
        Assert.Equal([PowerEvent.Reset], events);
    }
}
