using System.Buffers.Binary;
using System.Text;
using Kit.HyperKit.Vm;

namespace Kit.HyperKit.Boot;

/// <summary>
/// Minimal ACPI 2.0+ tables for a stock Linux guest (ACPI 6.x spec section numbers below):
/// RSDP (5.2.5) → XSDT (5.2.8) → FADT (5.2.9, 244-byte revision 4 layout) + MADT (5.2.12); FADT → DSDT + FACS.
/// The FADT names an ACPI PM1a event block at 0x600 and control block at 0x604 so the guest can power off by writing
/// SLP_EN (<see cref="AcpiPmDevice"/>), and port 0xCF9 as the reset register. The DSDT declares \_S5 (required before
/// Linux will use ACPI power-off) and one PCI root bridge PNP0A03 without _CRS, so Linux scans bus 0 through
/// configuration mechanism #1 with default resources. The MADT lists one enabled local APIC per vCPU, the IOAPIC and
/// LINT1 as NMI.
/// </summary>
public static class AcpiTables
{
    public const ushort Pm1aEventPort = PortLayout.Pm1aEvent;
    public const ushort Pm1aControlPort = PortLayout.Pm1aControl;
    public const uint IoApicAddress = (uint)MemoryLayout.IoApicAddress;
    public const uint LocalApicAddress = (uint)MemoryLayout.LocalApicAddress;
    private const string OemId = "KITVMM";
    private const string OemTableId = "KITVMM01";

    /// <summary>Writes all tables into <paramref name="region"/> (mapped at guest physical <paramref name="baseAddress"/>).
    /// The RSDP comes first, so the returned RSDP address is <paramref name="baseAddress"/>.</summary>
    public static ulong Build(Span<byte> region, ulong baseAddress, int cpus)
    {
        region.Clear();
        int offset = 64; // RSDP at 0, tables after it, each 16-byte aligned
        int Place(ReadOnlySpan<byte> table, Span<byte> r)
        {
            int at = offset;
            table.CopyTo(r[at..]);
            offset = (at + table.Length + 15) & ~15;
            return at;
        }

        byte[] dsdt = Dsdt();
        int dsdtAt = Place(dsdt, region);
        byte[] facs = Facs();
        int facsAt = Place(facs, region);
        byte[] fadt = Fadt(baseAddress + (ulong)facsAt, baseAddress + (ulong)dsdtAt);
        int fadtAt = Place(fadt, region);
        byte[] madt = Madt(cpus);
        int madtAt = Place(madt, region);
        byte[] xsdt = Xsdt([baseAddress + (ulong)fadtAt, baseAddress + (ulong)madtAt]);
        int xsdtAt = Place(xsdt, region);
        Rsdp(region[..36], baseAddress + (ulong)xsdtAt);
        return baseAddress;
    }

    private static void Rsdp(Span<byte> r, ulong xsdt)
    {
        Encoding.ASCII.GetBytes("RSD PTR ", r);
        Encoding.ASCII.GetBytes(OemId, r[9..]);
        r[15] = 2; // revision: ACPI 2.0+
        BinaryPrimitives.WriteUInt32LittleEndian(r[20..], 36);
        BinaryPrimitives.WriteUInt64LittleEndian(r[24..], xsdt);
        r[8] = Checksum(r[..20]);
        r[32] = Checksum(r[..36]);
    }

    private static byte[] Header(string signature, int length, byte revision)
    {
        byte[] t = new byte[length];
        Encoding.ASCII.GetBytes(signature, t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), (uint)length);
        t[8] = revision;
        Encoding.ASCII.GetBytes(OemId, t.AsSpan(10));
        Encoding.ASCII.GetBytes(OemTableId, t.AsSpan(16));
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(24), 1);
        Encoding.ASCII.GetBytes("KIT ", t.AsSpan(28));
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(32), 1);
        return t;
    }

    private static byte[] Seal(byte[] t)
    {
        t[9] = 0;
        t[9] = Checksum(t);
        return t;
    }

    public static byte Checksum(ReadOnlySpan<byte> bytes)
    {
        byte sum = 0;
        foreach (byte b in bytes)
        {
            sum += b;
        }
        return (byte)(0 - sum);
    }

    private static byte[] Xsdt(ReadOnlySpan<ulong> entries)
    {
        byte[] t = Header("XSDT", 36 + 8 * entries.Length, 1);
        for (int i = 0; i < entries.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(t.AsSpan(36 + 8 * i), entries[i]);
        }
        return Seal(t);
    }

    private static byte[] Facs()
    {
        // FACS has no checksum and no standard header: signature, length, hardware signature, waking vectors, ...
        byte[] t = new byte[64];
        Encoding.ASCII.GetBytes("FACS", t);
        BinaryPrimitives.WriteUInt32LittleEndian(t.AsSpan(4), 64);
        t[32] = 2; // version
        return t;
    }

    private static void Gas(Span<byte> g, byte space, byte bitWidth, byte accessSize, ulong address)
    {
        g[0] = space;   // 1 = system I/O
        g[1] = bitWidth;
        g[2] = 0;
        g[3] = accessSize;
        BinaryPrimitives.WriteUInt64LittleEndian(g[4..], address);
    }

    private static byte[] Fadt(ulong facs, ulong dsdt)
    {
        byte[] t = Header("FACP", 244, 4);
        Span<byte> s = t;
        BinaryPrimitives.WriteUInt32LittleEndian(s[36..], (uint)facs);
        BinaryPrimitives.WriteUInt32LittleEndian(s[40..], (uint)dsdt);
        BinaryPrimitives.WriteUInt16LittleEndian(s[46..], 9);               // SCI_INT (never raised)
        BinaryPrimitives.WriteUInt32LittleEndian(s[48..], 0);               // SMI_CMD 0: always in ACPI mode
        BinaryPrimitives.WriteUInt32LittleEndian(s[56..], Pm1aEventPort);   // PM1a_EVT_BLK
        BinaryPrimitives.WriteUInt32LittleEndian(s[64..], Pm1aControlPort); // PM1a_CNT_BLK
        s[88] = 4;                                                           // PM1_EVT_LEN
        s[89] = 2;                                                           // PM1_CNT_LEN
        BinaryPrimitives.WriteUInt16LittleEndian(s[96..], 101);              // P_LVL2_LAT > 100: no C2
        BinaryPrimitives.WriteUInt16LittleEndian(s[98..], 1001);             // P_LVL3_LAT > 1000: no C3
        // IAPC_BOOT_ARCH: no legacy devices bit, no 8042 (skips PS/2 probing), VGA not present, no CMOS RTC.
        BinaryPrimitives.WriteUInt16LittleEndian(s[109..], 0x0004 | 0x0020);
        // Flags: WBINVD, power and sleep buttons are not fixed features, RESET_REG supported.
        BinaryPrimitives.WriteUInt32LittleEndian(s[112..], (1u << 0) | (1u << 4) | (1u << 5) | (1u << 10));
        Gas(s[116..], 1, 8, 1, 0xCF9);                                       // RESET_REG: port 0xCF9
        s[128] = 0x06;                                                       // RESET_VALUE: hard reset
        BinaryPrimitives.WriteUInt64LittleEndian(s[132..], facs);           // X_FIRMWARE_CTRL
        BinaryPrimitives.WriteUInt64LittleEndian(s[140..], dsdt);           // X_DSDT
        Gas(s[148..], 1, 32, 2, Pm1aEventPort);                              // X_PM1a_EVT_BLK
        Gas(s[172..], 1, 16, 2, Pm1aControlPort);                            // X_PM1a_CNT_BLK
        return Seal(t);
    }

    private static byte[] Madt(int cpus)
    {
        int length = 44 + 8 * cpus + 12 + 6;
        byte[] t = Header("APIC", length, 3);
        Span<byte> s = t;
        BinaryPrimitives.WriteUInt32LittleEndian(s[36..], LocalApicAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[40..], 1); // PCAT_COMPAT: dual 8259s present (in-kernel PIC)
        int o = 44;
        for (int i = 0; i < cpus; i++)
        {
            s[o] = 0;      // processor local APIC
            s[o + 1] = 8;
            s[o + 2] = (byte)i; // ACPI processor UID
            s[o + 3] = (byte)i; // APIC ID = vCPU id
            BinaryPrimitives.WriteUInt32LittleEndian(s[(o + 4)..], 1); // enabled
            o += 8;
        }
        s[o] = 1;          // I/O APIC
        s[o + 1] = 12;
        s[o + 2] = (byte)cpus; // IOAPIC id after the LAPIC ids (KVM's in-kernel IOAPIC answers any id)
        BinaryPrimitives.WriteUInt32LittleEndian(s[(o + 4)..], IoApicAddress);
        BinaryPrimitives.WriteUInt32LittleEndian(s[(o + 8)..], 0); // GSI base
        o += 12;
        s[o] = 4;          // local APIC NMI: all processors, LINT1
        s[o + 1] = 6;
        s[o + 2] = 0xFF;
        BinaryPrimitives.WriteUInt16LittleEndian(s[(o + 3)..], 0);
        s[o + 5] = 1;
        return Seal(t);
    }

    /// <summary>
    /// The DSDT's AML, assembled by hand (ACPI 6.x section 20, AML grammar):
    /// <code>
    /// Name (_S5, Package (4) { 5, 5, 0, 0 })
    /// Scope (_SB) { Device (PCI0) { Name (_HID, EisaId ("PNP0A03")) Name (_UID, 0) Name (_BBN, 0) } }
    /// </code>
    /// </summary>
    public static byte[] DsdtAml() =>
    [
        // NameOp "_S5_" PackageOp PkgLength(8) NumElements(4) BytePrefix 5, BytePrefix 5, Zero, Zero
        0x08, (byte)'_', (byte)'S', (byte)'5', (byte)'_', 0x12, 0x08, 0x04, 0x0A, 0x05, 0x0A, 0x05, 0x00, 0x00,
        // ScopeOp PkgLength(34) "_SB_"
        0x10, 0x22, (byte)'_', (byte)'S', (byte)'B', (byte)'_',
        // DeviceOp (ExtOpPrefix 0x5B, 0x82) PkgLength(27) "PCI0"
        0x5B, 0x82, 0x1B, (byte)'P', (byte)'C', (byte)'I', (byte)'0',
        // Name (_HID, DWordConst EISA "PNP0A03" = 0x030AD041)
        0x08, (byte)'_', (byte)'H', (byte)'I', (byte)'D', 0x0C, 0x41, 0xD0, 0x0A, 0x03,
        // Name (_UID, Zero)
        0x08, (byte)'_', (byte)'U', (byte)'I', (byte)'D', 0x00,
        // Name (_BBN, Zero)
        0x08, (byte)'_', (byte)'B', (byte)'B', (byte)'N', 0x00,
    ];

    private static byte[] Dsdt()
    {
        byte[] aml = DsdtAml();
        byte[] t = Header("DSDT", 36 + aml.Length, 2);
        aml.CopyTo(t, 36);
        return Seal(t);
    }
}
