using Kit.HyperKit.Devices;
using Kit.HyperKit.Devices.Pci;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Rng;
using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

public sealed class PciTests : IDisposable
{
    private readonly GuestMemory _memory = new(0x20000);
    private readonly PciBus _bus = new();
    private readonly ConfigDriver _cfg;
    private readonly int _slot;

    public PciTests()
    {
        _cfg = new ConfigDriver(_bus);
        _slot = _bus.Add(new VirtioPciDevice(new VirtioRng(), _memory, new RecordingMsi(), _bus.AllocateBar(VirtioPciDevice.BarLength)));
    }

    public void Dispose() => _memory.Dispose();

    [Fact]
    public void EnumerationFindsHostBridgeAndDevice()
    {
        Assert.Equal(0x29C08086u, _cfg.Read32(0, 0));
        Assert.Equal(0x06u, _cfg.Read32(0, 8) >> 24); // bridge class
        Assert.Equal(0x10441AF4u, _cfg.Read32(_slot, 0)); // virtio 1.0 entropy
        Assert.Equal(1u, _cfg.Read32(_slot, 8) & 0xFF);   // revision 1: modern only
        Assert.Equal(0x0040u, _cfg.Read32(_slot, 0x2C) >> 16);
        for (int slot = _slot + 1; slot < 32; slot++)
        {
            Assert.Equal(0xFFFFFFFFu, _cfg.Read32(slot, 0));
        }
    }

    [Fact]
    public void OtherBusesAndFunctionsAreAbsent()
    {
        Span<byte> data = stackalloc byte[4];
        _cfg.Select(_slot, 0, function: 1);
        _bus.Read(PciBus.ConfigDataPort, data);
        Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(data));
        _cfg.Select(_slot, 0, busNumber: 1);
        _bus.Read(PciBus.ConfigDataPort, data);
        Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(data));
    }

    [Fact]
    public void DisabledConfigAddressReadsAllOnes()
    {
        _bus.Write(PciBus.ConfigAddressPort, BitConverter.GetBytes(0x0000_0000u));
        Span<byte> data = stackalloc byte[4];
        _bus.Read(PciBus.ConfigDataPort, data);
        Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(data));
    }

    [Fact]
    public void ConfigAddressRegisterReadsBack()
    {
        _cfg.Select(3, 0x10);
        Span<byte> data = stackalloc byte[4];
        _bus.Read(PciBus.ConfigAddressPort, data);
        Assert.Equal(0x8000_1810u, BitConverter.ToUInt32(data));
    }

    [Fact]
    public void BarSizingFollowsTheProtocol()
    {
        uint original = _cfg.Read32(_slot, 0x10);
        Assert.Equal(0u, original & 0xF); // 32-bit memory, non-prefetchable
        _cfg.Write32(_slot, 0x10, 0xFFFFFFFF);
        Assert.Equal(~(VirtioPciDevice.BarLength - 1), _cfg.Read32(_slot, 0x10));
        _cfg.Write32(_slot, 0x10, original);
        Assert.Equal(original, _cfg.Read32(_slot, 0x10));
        // Unimplemented BARs stay zero whatever is written.
        _cfg.Write32(_slot, 0x14, 0xFFFFFFFF);
        Assert.Equal(0u, _cfg.Read32(_slot, 0x14));
    }

    [Fact]
    public void ReadOnlyFieldsIgnoreWrites()
    {
        uint id = _cfg.Read32(_slot, 0);
        uint cls = _cfg.Read32(_slot, 8);
        byte capPtr = _cfg.Read8(_slot, 0x34);
        _cfg.Write32(_slot, 0, 0x12345678);
        _cfg.Write32(_slot, 8, 0xFFFFFFFF);
        _cfg.Write8(_slot, 0x34, 0x00);
        _cfg.Write8(_slot, 0x40, 0x99); // capability ID byte
        Assert.Equal(id, _cfg.Read32(_slot, 0));
        Assert.Equal(cls, _cfg.Read32(_slot, 8));
        Assert.Equal(capPtr, _cfg.Read8(_slot, 0x34));
        Assert.Equal(0x09, _cfg.Read8(_slot, 0x40));
    }

    [Fact]
    public void UnalignedAndStraddlingAccessesAreDropped()
    {
        // A 4-byte access at lane 2 would straddle the dword: reads all ones, writes nothing.
        _cfg.Select(_slot, 0);
        Span<byte> data = stackalloc byte[4];
        _bus.Read(PciBus.ConfigDataPort + 2, data);
        Assert.Equal(0xFFFFFFFFu, BitConverter.ToUInt32(data));
        _cfg.Select(_slot, 0x04);
        _bus.Write(PciBus.ConfigDataPort + 2, [0xFF, 0xFF, 0xFF, 0xFF]);
        Assert.Equal(0u, _cfg.Read32(_slot, 0x04) & 0xFFFF);
        // Byte lanes address the right bytes.
        Assert.Equal(0xF4, _cfg.Read8(_slot, 0));
        Assert.Equal(0x1A, _cfg.Read8(_slot, 1));
        Assert.Equal(0x44, _cfg.Read8(_slot, 2));
    }

    [Fact]
    public void CommandRegisterGatesMmioDecoding()
    {
        var mmio = new MmioBus();
        mmio.AttachPci(_bus);
        uint bar = _cfg.Read32(_slot, 0x10);
        Span<byte> d = stackalloc byte[1];
        mmio.Read(bar + 20, d);
        Assert.Equal(0xFF, d[0]); // memory decoding off: nobody answers
        _cfg.Write32(_slot, 0x04, 0x02);
        mmio.Read(bar + 20, d);
        Assert.Equal(0, d[0]); // device_status
        Assert.Equal(1, mmio.UnclaimedAccesses);
    }

    [Fact]
    public void AMovedBarIsFollowed()
    {
        var mmio = new MmioBus();
        mmio.AttachPci(_bus);
        _cfg.Write32(_slot, 0x04, 0x02);
        _cfg.Write32(_slot, 0x10, 0xE000_0000);
        Span<byte> d = stackalloc byte[2];
        mmio.Read(0xE000_0000 + 18, d);
        Assert.Equal(1, BitConverter.ToUInt16(d)); // num_queues
    }

    [Fact]
    public void ResetControlRegisterRequestsReset()
    {
        int resets = 0;
        _bus.ResetRequested += () => resets++;
        _bus.Write(0xCF9, [0x02]);
        Assert.Equal(0, resets);
        _bus.Write(0xCF9, [0x06]);
        Assert.Equal(1, resets);
    }

    [Fact]
    public void RandomConfigTrafficNeverThrows()
    {
        var random = new Random(7);
        byte[] data = new byte[4];
        for (int i = 0; i < 20000; i++)
        {
            random.NextBytes(data);
            ushort port = (ushort)(0xCF8 + random.Next(8));
            int size = 1 << random.Next(3);
            if (random.Next(2) == 0)
            {
                _bus.Write(port, data.AsSpan(0, size));
            }
            else
            {
                _bus.Read(port, data.AsSpan(0, size));
            }
        }
        Assert.Equal(0x29C08086u, _cfg.Read32(0, 0));
    }
}
