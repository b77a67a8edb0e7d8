using System.Buffers.Binary;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

public sealed class Ipv4ReassemblyTests
{
    private readonly CapturingSink _sink = new();
    private readonly RecordingFlows _flows = new();
    private readonly Gateway _gw;

    public Ipv4ReassemblyTests() => _gw = new Gateway(new GatewayOptions { IsnSecret = 1 }, _sink, _flows);

    private static byte[] Payload(int n)
    {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++)
        {
            b[i] = (byte)(i * 7);
        }
        return b;
    }

    /// <summary>Cuts a whole frame's IPv4 datagram into fragments of <paramref name="size"/> payload bytes (RFC 791 §3.2).</summary>
    private static List<byte[]> Fragments(byte[] frame, int size, ushort id = 77)
    {
        ReadOnlySpan<byte> payload = frame.AsSpan(34);
        var list = new List<byte[]>();
        for (int off = 0; off < payload.Length; off += size)
        {
            int n = Math.Min(size, payload.Length - off);
            byte[] f = new byte[34 + n];
            frame.AsSpan(0, 34).CopyTo(f);
            payload.Slice(off, n).CopyTo(f.AsSpan(34));
            Span<byte> ip = f.AsSpan(14);
            BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(2), (ushort)(20 + n));
            BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(4), id);
            BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(6), (ushort)((off + n < payload.Length ? 0x2000 : 0) | (off / 8)));
            ip[10] = ip[11] = 0;
            BinaryPrimitives.WriteUInt16BigEndian(ip.Slice(10), Checksum.Compute(ip.Slice(0, 20)));
            list.Add(f);
        }
        return list;
    }

    [Fact]
    public void OutOfOrderFragmentsOfAUdpDatagramAreReassembledAndItsChecksumVerified()
    {
        byte[] data = Payload(3000);
        List<byte[]> frags = Fragments(G.Udp(G.Remote, 5000, 6000, data), 1480);
        Assert.Equal(3, frags.Count);
        _gw.Receive(frags[2], 1000);
        _gw.Receive(frags[0], 1001);
        Assert.Empty(_flows.Udp);
        _gw.Receive(frags[0], 1001); // a duplicate changes nothing
        _gw.Receive(frags[1], 1002);
        var (flow, payload) = Assert.Single(_flows.Udp);
        Assert.Equal(new UdpFlow(G.Guest, 5000, G.Remote, 6000), flow);
        Assert.Equal(data, payload);
        Assert.Equal(1, _gw.Counters.Reassembled);
        Assert.Equal(0, _gw.ReassemblyDropped);
    }

    [Fact]
    public void ACorruptedFragmentMakesTheReassembledChecksumFailAndNothingIsDelivered()
    {
        List<byte[]> frags = Fragments(G.Udp(G.Remote, 5000, 6000, Payload(2000)), 1480);
        frags[1][^1] ^= 0xFF;
        foreach (byte[] f in frags)
        {
            _gw.Receive(f, 1000);
        }
        Assert.Empty(_flows.Udp);
        Assert.Equal(1, _gw.Counters.Reassembled);
    }

    [Fact]
    public void AnIncompleteDatagramTimesOutAndItsSlotIsReused()
    {
        List<byte[]> frags = Fragments(G.Udp(G.Remote, 5000, 6000, Payload(3000)), 1480);
        _gw.Receive(frags[0], 1000);
        _gw.Receive(frags[1], 1000);
        // After the reassembly timeout the late last fragment starts a new datagram, which never completes.
        _gw.Receive(frags[2], 1000 + Ipv4Reassembly.TimeoutMs);
        Assert.Empty(_flows.Udp);
        Assert.Equal(1, _gw.ReassemblyDropped);
    }

    [Fact]
    public void InconsistentFragmentsAreDropped()
    {
        var r = new Ipv4Reassembly();
        List<byte[]> frags = Fragments(G.Udp(G.Remote, 1, 2, Payload(3000)), 1480);
        // A middle fragment whose length is not a multiple of 8.
        byte[] odd = frags[0][..^3];
        BinaryPrimitives.WriteUInt16BigEndian(odd.AsSpan(16), (ushort)(odd.Length - 14));
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(odd.AsSpan(14), out Ipv4Packet p, verifyChecksum: false));
        Assert.False(r.Add(p, 0, out _));
        Assert.Equal(1, r.Dropped);
        // A last fragment that ends before data already received.
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(frags[1].AsSpan(14), out Ipv4Packet mid));
        Assert.False(r.Add(mid, 0, out _));
        byte[] shortLast = Fragments(G.Udp(G.Remote, 1, 2, Payload(100)), 1480)[0];
        BinaryPrimitives.WriteUInt16BigEndian(shortLast.AsSpan(18), 77);
        BinaryPrimitives.WriteUInt16BigEndian(shortLast.AsSpan(20), 1); // offset 8, MF=0: ends at 116 < 2968
        Assert.Equal(Ipv4Error.None, Ipv4Packet.TryParse(shortLast.AsSpan(14), out Ipv4Packet last, verifyChecksum: false));
        Assert.False(r.Add(last, 0, out _));
        Assert.Equal(2, r.Dropped);
    }

    [Fact]
    public void ManyUnfinishedDatagramsStayBoundedAndRandomFragmentsNeverThrow()
    {
        var rng = new Random(5);
        for (int i = 0; i < 5000; i++)
        {
            byte[] frame = G.Udp(G.Remote, 1, 2, Payload(rng.Next(0, 4000)));
            List<byte[]> frags = Fragments(frame, 8 * rng.Next(1, 200), (ushort)rng.Next());
            byte[] f = frags[rng.Next(frags.Count)];
            if (rng.Next(4) == 0)
            {
                f[14 + 6] = (byte)rng.Next(); // random flags / offset bits
                f[14 + 7] = (byte)rng.Next();
            }
            _gw.Receive(f, i);
        }
        Assert.True(_gw.Counters.Fragments > 1000);
        Assert.True(_gw.ReassemblyDropped > 1000); // evictions: only MaxDatagrams are ever held
    }
}
