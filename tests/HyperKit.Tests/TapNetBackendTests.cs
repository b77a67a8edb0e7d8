using System.Buffers.Binary;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Memory;
using Kit.Testing;

namespace Kit.HyperKit.Tests;

/// <summary>
/// The TAP backend against the real Linux stack: the TAP is moved into a network namespace this test creates and
/// given 10.211.0.1/24 there; a scripted driver sends an ARP request and an ICMP echo through the device's transmit
/// queue, and the kernel's ARP reply and echo reply must come back through the receive queue (with the virtio-net
/// header the TAP hands over).
/// </summary>
[Trait("Tier", "Real")]
public sealed class TapNetBackendTests : IDisposable
{
    private static readonly byte[] GuestMac = [0x02, 0x6b, 0x69, 0x74, 0x00, 0x01];
    private static readonly byte[] GuestIp = [10, 211, 0, 2], HostIp = [10, 211, 0, 1];
    private readonly string _ns = $"kit-tapt-{Environment.ProcessId}";
    private readonly string _tap = $"kittt{Environment.ProcessId % 100000}";
    private readonly GuestMemory _memory = new(1 << 20);

    public void Dispose()
    {
        ProcessRunner.Run("ip", ["netns", "del", _ns]);
        _memory.Dispose();
    }

    [Fact]
    public void The_kernel_answers_arp_and_ping_through_the_tap_backend()
    {
        Assert.True(File.Exists("/dev/net/tun"), "/dev/net/tun is missing");
        using TapBackend backend = TapBackend.Open(_tap, 1500);
        Assert.True(backend.Info.Offload);
        ProcessRunner.Run("ip", ["netns", "add", _ns]).EnsureSuccess();
        ProcessRunner.Run("ip", ["link", "set", _tap, "netns", _ns]).EnsureSuccess();
        ProcessRunner.Run("ip", ["-n", _ns, "addr", "add", "10.211.0.1/24", "dev", _tap]).EnsureSuccess();
        ProcessRunner.Run("ip", ["-n", _ns, "link", "set", _tap, "up"]).EnsureSuccess();

        var rx = new SplitQueue(_memory, 64);
        var tx = new SplitQueue(_memory, 64);
        var rxDriver = new QueueDriver(_memory, 64, 0x1000, 0x2000, 0x3000);
        var txDriver = new QueueDriver(_memory, 64, 0x5000, 0x6000, 0x7000);
        rxDriver.Configure(rx);
        txDriver.Configure(tx);
        var net = new VirtioNet(backend, GuestMac);
        net.DriverFeatures = VirtioFeatures.Version1 | VirtioNet.FeatureMrgRxbuf | VirtioNet.FeatureCsum | VirtioNet.FeatureGuestCsum;
        using var arrived = new SemaphoreSlim(0);
        net.ProcessQueue = q =>
        {
            lock (net)
            {
                if (net.Process(q, q == 0 ? rx : tx, _memory) && q == 0)
                {
                    arrived.Release();
                }
            }
        };
        lock (net)
        {
            for (int i = 0; i < 32; i++)
            {
                rxDriver.Post((0x10000 + (ulong)i * 0x1000, 0x1000, true));
            }
        }

        // ARP who-has 10.211.0.1 tell 10.211.0.2 (RFC 826).
        byte[] arp = new byte[42];
        arp.AsSpan(0, 6).Fill(0xFF);
        GuestMac.CopyTo(arp, 6);
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(12), 0x0806);
        byte[] arpBody = [0, 1, 8, 0, 6, 4, 0, 1];
        arpBody.CopyTo(arp, 14);
        GuestMac.CopyTo(arp, 22);
        GuestIp.CopyTo(arp, 28);
        HostIp.CopyTo(arp, 38);
        Transmit(net, tx, txDriver, arp, 0x40000);
        byte[] reply = WaitFor(net, rxDriver, arrived, f => f.Length >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[21] == 2);
        byte[] hostMac = reply.AsSpan(22, 6).ToArray();

        // ICMP echo request (RFC 792) with an IPv4 header checksum and an ICMP checksum.
        byte[] ping = new byte[14 + 20 + 8 + 32];
        hostMac.CopyTo(ping, 0);
        GuestMac.CopyTo(ping, 6);
        BinaryPrimitives.WriteUInt16BigEndian(ping.AsSpan(12), 0x0800);
        Span<byte> ip = ping.AsSpan(14, 20);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], 20 + 8 + 32);
        ip[8] = 64;
        ip[9] = 1;
        GuestIp.CopyTo(ip[12..]);
        HostIp.CopyTo(ip[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], (ushort)~NetChecksum.Fold(NetChecksum.Sum(ip)));
        Span<byte> icmp = ping.AsSpan(34);
        icmp[0] = 8;
        BinaryPrimitives.WriteUInt16BigEndian(icmp[4..], 0x4b49);
        BinaryPrimitives.WriteUInt16BigEndian(icmp[6..], 1);
        for (int i = 8; i < icmp.Length; i++)
        {
            icmp[i] = (byte)i;
        }
        BinaryPrimitives.WriteUInt16BigEndian(icmp[2..], (ushort)~NetChecksum.Fold(NetChecksum.Sum(icmp)));
        Transmit(net, tx, txDriver, ping, 0x48000);
        byte[] echo = WaitFor(net, rxDriver, arrived, f => f.Length >= 42 && f[12] == 0x08 && f[13] == 0x00 && f[23] == 1 && f[34] == 0);
        Assert.Equal(GuestMac, echo[..6]);
        Assert.Equal(GuestIp, echo[30..34]);
        Assert.Equal(0x4b49, BinaryPrimitives.ReadUInt16BigEndian(echo.AsSpan(38)));
        Assert.Equal(ping[42..], echo[42..(42 + 32)]);
        Assert.Equal(0, net.TxDropped);
        net.Dispose();
    }

    private void Transmit(VirtioNet net, SplitQueue tx, QueueDriver driver, byte[] frame, ulong at)
    {
        lock (net)
        {
            _memory.GetSpan(at, VirtioNetHeader.Size).Clear();
            _memory.TryWrite(at + 0x100, frame);
            driver.Post((at, VirtioNetHeader.Size, false), (at + 0x100, (uint)frame.Length, false));
            net.Process(1, tx, _memory);
        }
    }

    private int _seen;

    /// <summary>Waits for a received frame matching <paramref name="match"/> (others, like IPv6 chatter, are skipped).</summary>
    private byte[] WaitFor(VirtioNet net, QueueDriver rxDriver, SemaphoreSlim arrived, Func<byte[], bool> match)
    {
        DateTime deadline = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            lock (net)
            {
                while (_seen != rxDriver.UsedIdx)
                {
                    (uint id, uint len) = rxDriver.UsedEntry(_seen++);
                    ulong addr = 0x10000 + (ulong)id * 0x1000;
                    byte[] frame = _memory.GetSpan(addr + VirtioNetHeader.Size, (int)len - VirtioNetHeader.Size).ToArray();
                    if (match(frame))
                    {
                        return frame;
                    }
                }
            }
            arrived.Wait(TimeSpan.FromMilliseconds(200));
        }
        Assert.Fail("no matching frame from the kernel within 10 s");
        return [];
    }
}
