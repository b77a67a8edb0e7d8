using Kit.HyperKit.Memory;
using Kit.HyperKit.VhostUser;

namespace Kit.HyperKit.Tests;

/// <summary>vhost-user message views: golden bytes, round trips, and arbitrary bytes that never throw.</summary>
public sealed class VhostUserCodecTests
{
    [Fact]
    public void Header_golden_bytes()
    {
        // GET_FEATURES from QEMU: request 1, flags 0x1 (version 1), size 0.
        byte[] bytes = [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        Assert.True(VhostUserHeader.TryParse(bytes, out VhostUserHeader h, out VhostUserError e));
        Assert.Equal(VhostUserError.None, e);
        Assert.Equal(new VhostUserHeader(VhostUserRequest.GetFeatures, 1, 0), h);
        // A reply: flags version | REPLY = 0x5, size 8.
        byte[] reply = new byte[12];
        new VhostUserHeader(VhostUserRequest.GetFeatures, VhostUserFlags.Version | VhostUserFlags.Reply, 8).Write(reply);
        Assert.Equal(new byte[] { 1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0 }, reply);
    }

    [Fact]
    public void Header_refusals()
    {
        Assert.False(VhostUserHeader.TryParse(new byte[11], out _, out VhostUserError e));
        Assert.Equal(VhostUserError.ShortHeader, e);
        Assert.False(VhostUserHeader.TryParse([1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], out _, out e));
        Assert.Equal(VhostUserError.BadVersion, e);
        Assert.False(VhostUserHeader.TryParse([1, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0], out _, out e));
        Assert.Equal(VhostUserError.UnexpectedReply, e);
        Assert.False(VhostUserHeader.TryParse([5, 0, 0, 0, 1, 0, 0, 0, 1, 16, 0, 0], out _, out e));
        Assert.Equal(VhostUserError.PayloadTooLarge, e);
        Assert.True(VhostUserHeader.TryParse([5, 0, 0, 0, 9, 0, 0, 0, 0, 16, 0, 0], out VhostUserHeader h, out _));
        Assert.True(h.NeedReply);
    }

    [Fact]
    public void Vring_address_is_descriptor_used_available_in_that_order()
    {
        byte[] golden =
        [
            1, 0, 0, 0, 0, 0, 0, 0,
            0x00, 0x10, 0, 0, 0, 0, 0, 0, // descriptor 0x1000
            0x00, 0x30, 0, 0, 0, 0, 0, 0, // used 0x3000
            0x00, 0x20, 0, 0, 0, 0, 0, 0, // available 0x2000
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        Assert.True(VringAddress.TryParse(golden, out VringAddress a));
        Assert.Equal(new VringAddress(1, 0, 0x1000, 0x3000, 0x2000, 0), a);
        byte[] round = new byte[VringAddress.Length];
        a.Write(round);
        Assert.Equal(golden, round);
        Assert.False(VringAddress.TryParse(golden.AsSpan(0, 39), out _));
    }

    [Fact]
    public void Memory_table_round_trip_and_limits()
    {
        VhostMemoryRegion[] regions = [new(0, 0xa0000, 0x7f00_0000_0000, 0), new(0xc0000, 0x1ff40000, 0x7f00_000c_0000, 0xc0000)];
        byte[] bytes = new byte[8 + 32 * regions.Length];
        Assert.Equal(bytes.Length, VhostMemoryTable.Write(bytes, regions));
        Assert.True(VhostMemoryTable.TryParse(bytes, out VhostMemoryTable t, out _));
        Assert.Equal(2, t.Count);
        Assert.Equal(regions[1], t[1]);
        Assert.False(VhostMemoryTable.TryParse(bytes.AsSpan(0, bytes.Length - 1), out _, out VhostUserError e));
        Assert.Equal(VhostUserError.ShortPayload, e);
        bytes[0] = 9;
        Assert.False(VhostMemoryTable.TryParse(bytes, out _, out e));
        Assert.Equal(VhostUserError.TooManyRegions, e);
    }

    [Fact]
    public void Config_view_checks_size_and_offset()
    {
        byte[] p = new byte[12 + 8];
        p[4] = 8;
        Assert.True(VhostConfigView.TryParse(p, out VhostConfigView c, out _));
        Assert.Equal(8u, c.Size);
        p[4] = 0;
        p[5] = 1; // size 256: more than the payload holds
        Assert.False(VhostConfigView.TryParse(p, out _, out VhostUserError e));
        Assert.Equal(VhostUserError.ShortPayload, e);
        p[5] = 0xff; // size beyond VHOST_USER_MAX_CONFIG_SIZE
        Assert.False(VhostConfigView.TryParse(p, out _, out e));
        Assert.Equal(VhostUserError.BadConfigSize, e);
    }

    [Fact]
    public void Arbitrary_bytes_never_throw()
    {
        var random = new Random(1234);
        byte[] buffer = new byte[400];
        for (int i = 0; i < 20_000; i++)
        {
            int length = random.Next(buffer.Length + 1);
            Span<byte> b = buffer.AsSpan(0, length);
            random.NextBytes(b);
            if (random.Next(2) == 0 && length >= 4)
            {
                b[0] = (byte)random.Next(10); // small region counts, so the table path is walked too
                b[1] = b[2] = b[3] = 0;
            }
            _ = VhostUserHeader.TryParse(b, out _, out _);
            _ = VringState.TryParse(b, out _);
            _ = VringAddress.TryParse(b, out _);
            if (VhostMemoryTable.TryParse(b, out VhostMemoryTable t, out _))
            {
                for (int r = 0; r < t.Count; r++)
                {
                    _ = t[r];
                }
            }
            if (VhostConfigView.TryParse(b, out VhostConfigView c, out _))
            {
                Assert.Equal((int)c.Size, c.Data.Length);
            }
        }
    }
}

/// <summary>GuestMemory built from regions (a vhost-user memory table), beside the single-mapping shape.</summary>
public sealed class GuestMemoryRegionTests
{
    [Fact]
    public void Regions_are_addressed_separately_and_a_crossing_range_is_refused()
    {
        nint l = System.Runtime.InteropServices.Marshal.AllocHGlobal(0x1000);
        nint h = System.Runtime.InteropServices.Marshal.AllocHGlobal(0x1000);
        try
        {
            using var memory = new GuestMemory([new GuestRegion(0x1000, 0x1000, h), new GuestRegion(0, 0x1000, l)]);
            Assert.Equal(0x2000UL, memory.Size);
            Assert.True(memory.TryWriteU32(0xffc, 0x11223344));
            Assert.True(memory.TryWriteU32(0x1000, 0x55667788));
            Assert.Equal(0x44, System.Runtime.InteropServices.Marshal.ReadByte(l, 0xffc));
            Assert.Equal(0x88, System.Runtime.InteropServices.Marshal.ReadByte(h, 0));
            // Adjacent in guest-physical space, not in host memory: a range across the boundary is refused.
            Assert.False(memory.TryGetSpan(0xffe, 4, out _));
            Assert.False(memory.Contains(0xffe, 4));
            Assert.True(memory.Contains(0x1000, 0x1000));
            Assert.False(memory.Contains(0x1000, 0x1001));
            Assert.False(memory.TryReadU64(ulong.MaxValue - 3, out _));
            Assert.False(memory.TryGetSpan(0x800, -1, out _));
        }
        finally
        {
            System.Runtime.InteropServices.Marshal.FreeHGlobal(l);
            System.Runtime.InteropServices.Marshal.FreeHGlobal(h);
        }
    }

    [Fact]
    public void Holes_are_outside_memory()
    {
        nint pa = System.Runtime.InteropServices.Marshal.AllocHGlobal(0x1000);
        nint pb = System.Runtime.InteropServices.Marshal.AllocHGlobal(0x1000);
        try
        {
            using var memory = new GuestMemory([new GuestRegion(0, 0x1000, pa), new GuestRegion(0x10000, 0x1000, pb)]);
            Assert.False(memory.TryReadU16(0x2000, out _));
            Assert.True(memory.TryReadU16(0x10ffe, out _));
            Assert.False(memory.TryReadU16(0x10fff, out _));
        }
        finally
        {
            System.Runtime.InteropServices.Marshal.FreeHGlobal(pa);
            System.Runtime.InteropServices.Marshal.FreeHGlobal(pb);
        }
    }

    [Fact]
    public void Overlapping_empty_or_wrapping_regions_are_refused()
    {
        Assert.Throws<ArgumentException>(() => new GuestMemory([new GuestRegion(0, 0x2000, 0x1000), new GuestRegion(0x1000, 0x1000, 0x9000)]));
        Assert.Throws<ArgumentException>(() => new GuestMemory([new GuestRegion(0, 0, 0x1000)]));
        Assert.Throws<ArgumentException>(() => new GuestMemory([new GuestRegion(ulong.MaxValue - 0xfff, 0x2000, 0x1000)]));
        Assert.Throws<ArgumentException>(() => new GuestMemory(ReadOnlySpan<GuestRegion>.Empty));
    }
}
