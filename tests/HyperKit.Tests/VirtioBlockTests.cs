using System.Buffers.Binary;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Block;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

public sealed class VirtioBlockTests : IDisposable
{
    private const ulong Header = 0x10000, Data = 0x11000, Status = 0x20000;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"kit-blk-{Guid.NewGuid():N}.img");
    private readonly GuestMemory _memory = new(0x40000);
    private readonly SplitQueue _queue;
    private readonly QueueDriver _driver;

    public VirtioBlockTests()
    {
        using (FileStream f = File.Create(_path))
        {
            f.SetLength(1 << 20);
            byte[] pattern = new byte[4096];
            for (int i = 0; i < pattern.Length; i++)
            {
                pattern[i] = (byte)(i * 7);
            }
            f.Write(pattern);
        }
        _queue = new SplitQueue(_memory, 16);
        _driver = new QueueDriver(_memory, 16);
        _driver.Configure(_queue);
    }

    public void Dispose()
    {
        _memory.Dispose();
        File.Delete(_path);
    }

    private VirtioBlock Open(bool readOnly = false) => new(new RawFileBackend(_path, readOnly));

    private void WriteHeader(uint type, ulong sector)
    {
        Span<byte> h = stackalloc byte[16];
        h.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], sector);
        _memory.TryWrite(Header, h);
        _memory.TryWrite(Status, [0xEE]);
    }

    private byte StatusByte => _memory.GetSpan(Status, 1)[0];

    [Fact]
    public void ReadReturnsDiskBytes()
    {
        VirtioBlock blk = Open();
        WriteHeader(VirtioBlock.TypeIn, 1);
        _driver.Post((Header, 16, false), (Data, 512, true), (Status, 1, true));
        Assert.True(blk.Process(0, _queue, _memory));
        Assert.Equal(VirtioBlock.StatusOk, StatusByte);
        Assert.Equal(513u, _driver.UsedEntry(0).Len);
        Assert.Equal(unchecked((byte)(512 * 7)), _memory.GetSpan(Data, 1)[0]);
        Assert.Equal(unchecked((byte)(1000 * 7)), _memory.GetSpan(Data + 488, 1)[0]);
    }

    [Fact]
    public void WriteThenReadBackAcrossSegments()
    {
        VirtioBlock blk = Open();
        _memory.GetSpan(Data, 1024).Fill(0xAB);
        WriteHeader(VirtioBlock.TypeOut, 10);
        _driver.Post((Header, 16, false), (Data, 512, false), (Data + 512, 512, false), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusOk, StatusByte);
        WriteHeader(VirtioBlock.TypeFlush, 0);
        _driver.Post((Header, 16, false), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusOk, StatusByte);
        byte[] file = File.ReadAllBytes(_path);
        Assert.All(file.AsSpan(10 * 512, 1024).ToArray(), b => Assert.Equal(0xAB, b));
        Assert.Equal(0, file[11 * 512 + 1024]);
    }

    [Fact]
    public void ReadOnlyDisksRefuseWritesAndAdvertiseRo()
    {
        VirtioBlock blk = Open(readOnly: true);
        Assert.NotEqual(0UL, blk.DeviceFeatures & VirtioBlock.FeatureRo);
        Assert.Equal(0UL, blk.DeviceFeatures & VirtioBlock.FeatureDiscard);
        WriteHeader(VirtioBlock.TypeOut, 0);
        _driver.Post((Header, 16, false), (Data, 512, false), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusIoErr, StatusByte);
        Assert.Equal(0, File.ReadAllBytes(_path)[1] - 7);
    }

    [Fact]
    public void DiscardPunchesAHole()
    {
        VirtioBlock blk = Open();
        WriteHeader(VirtioBlock.TypeDiscard, 0);
        Span<byte> seg = stackalloc byte[16];
        seg.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(seg, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(seg[8..], 8); // 4 KiB
        _memory.TryWrite(Data, seg);
        _driver.Post((Header, 16, false), (Data, 16, false), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusOk, StatusByte);
        byte[] file = File.ReadAllBytes(_path);
        Assert.All(file.AsSpan(0, 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(1 << 20, file.Length);
    }

    [Fact]
    public void GetIdReturnsTheSerial()
    {
        VirtioBlock blk = new(new RawFileBackend(_path, false), "disk-42");
        WriteHeader(VirtioBlock.TypeGetId, 0);
        _driver.Post((Header, 16, false), (Data, 20, true), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusOk, StatusByte);
        Assert.Equal("disk-42\0"u8.ToArray(), _memory.GetSpan(Data, 8).ToArray());
    }

    [Theory]
    [InlineData(2047UL, 1024u)] // runs past the 2048-sector end
    [InlineData(2048UL, 512u)]
    [InlineData(ulong.MaxValue, 512u)]
    [InlineData(0UL, 100u)] // not a whole sector
    public void OutOfRangeReadsFail(ulong sector, uint length)
    {
        VirtioBlock blk = Open();
        WriteHeader(VirtioBlock.TypeIn, sector);
        _driver.Post((Header, 16, false), (Data, length, true), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusIoErr, StatusByte);
        Assert.Equal(1u, _driver.UsedEntry(0).Len); // only the status byte
    }

    [Fact]
    public void UnknownTypesAreUnsupported()
    {
        VirtioBlock blk = Open();
        WriteHeader(77, 0);
        _driver.Post((Header, 16, false), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusUnsupported, StatusByte);
    }

    [Fact]
    public void MalformedRequestsFailWithoutStatusOverrun()
    {
        VirtioBlock blk = Open();
        // Header too short.
        _driver.Post((Header, 8, false), (Status, 1, true));
        blk.Process(0, _queue, _memory);
        Assert.Equal(VirtioBlock.StatusIoErr, StatusByte);
        // No writable status descriptor at all: nothing is written, the chain is still returned.
        _memory.TryWrite(Status, [0xEE]);
        WriteHeader(VirtioBlock.TypeIn, 0);
        _driver.Post((Header, 16, false), (Data, 512, false));
        blk.Process(0, _queue, _memory);
        Assert.Equal(2, _driver.UsedIdx);
        Assert.Equal(0u, _driver.UsedEntry(1).Len);
        Assert.Equal(0xEE, StatusByte);
        Assert.Equal(2, blk.Errors);
    }

    [Fact]
    public void ConfigReportsCapacity()
    {
        VirtioBlock blk = Open();
        Span<byte> cfg = stackalloc byte[8];
        blk.ReadConfig(0, cfg);
        Assert.Equal(2048UL, BinaryPrimitives.ReadUInt64LittleEndian(cfg));
        Span<byte> beyond = stackalloc byte[4];
        blk.ReadConfig(4000, beyond);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(beyond));
    }
}
