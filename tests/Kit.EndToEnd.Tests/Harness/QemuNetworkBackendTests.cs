using System.Buffers.Binary;
using System.Net.Sockets;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Harness;

/// <summary>
/// The harness's stream and dgram netdev paths reach a C# peer: the guest's DHCP discovers arrive as
/// 4-byte big-endian length-framed frames on a Unix stream socket, and as one frame per datagram.
/// </summary>
[Trait("Tier", "Real")]
public sealed class QemuNetworkBackendTests(ITestOutputHelper output)
{
    private static readonly byte[] s_streamMac = [0x52, 0x54, 0x00, 0x4b, 0x00, 0x01];
    private static readonly byte[] s_dgramMac = [0x52, 0x54, 0x00, 0x4b, 0x00, 0x02];

    [Fact]
    public async Task Guest_frames_arrive_over_stream_and_dgram_netdevs()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-net-");
        try
        {
            string streamPath = Path.Combine(dir.FullName, "stream.sock");
            string hostDgram = Path.Combine(dir.FullName, "host.sock");
            string guestDgram = Path.Combine(dir.FullName, "guest.sock");
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(streamPath));
            listener.Listen(1);
            using var dgram = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            dgram.Bind(new UnixDomainSocketEndPoint(hostDgram));

            var options = new QemuGuestOptions()
                .AddNetwork(QemuNetwork.Stream(streamPath, "52:54:00:4b:00:01"))
                .AddNetwork(QemuNetwork.Dgram(guestDgram, hostDgram, "52:54:00:4b:00:02"));
            const string script = """
                for i in eth0 eth1; do
                  ip link set "$i" up
                  udhcpc -i "$i" -n -q -t 2 -T 1 >/dev/null 2>&1 && echo "$i got a lease?"
                done
                echo sent
                """;

            using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancel);
            await using QemuGuest guest = await QemuGuest.StartAsync(script, options, cancel);
            Task<(int Frames, int Discovers)> streamSide = CountStreamAsync(listener, stop.Token);
            Task<(int Frames, int Discovers)> dgramSide = CountDgramAsync(dgram, stop.Token);
            GuestResult result = await guest.WaitForExitAsync(cancel);
            await stop.CancelAsync();
            (int streamFrames, int streamDiscovers) = await streamSide;
            (int dgramFrames, int dgramDiscovers) = await dgramSide;

            output.WriteLine($"boot {result.BootTime.TotalSeconds:F1} s, total {result.Elapsed.TotalSeconds:F1} s");
            output.WriteLine($"stream: {streamFrames} frames, {streamDiscovers} DHCP discovers; dgram: {dgramFrames} frames, {dgramDiscovers} DHCP discovers");
            Assert.Equal(0, result.ExitCode);
            Assert.Contains("sent", result.Output, StringComparison.Ordinal);
            Assert.True(streamDiscovers >= 1, $"no DHCP discover over -netdev stream ({streamFrames} frames)\n{result.Serial}");
            Assert.True(dgramDiscovers >= 1, $"no DHCP discover over -netdev dgram ({dgramFrames} frames)\n{result.Serial}");
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    private static async Task<(int, int)> CountStreamAsync(Socket listener, CancellationToken cancel)
    {
        int frames = 0;
        int discovers = 0;
        try
        {
            using Socket peer = await listener.AcceptAsync(cancel);
            byte[] length = new byte[4];
            byte[] frame = new byte[65536 + 4];
            while (true)
            {
                await ReadExactlyAsync(peer, length, cancel);
                int size = (int)BinaryPrimitives.ReadUInt32BigEndian(length);
                Assert.InRange(size, 14, 65535 + 14);
                await ReadExactlyAsync(peer, frame.AsMemory(0, size), cancel);
                frames++;
                discovers += IsDhcpDiscoverFrom(frame.AsSpan(0, size), s_streamMac) ? 1 : 0;
            }
        }
        catch (Exception e) when (e is OperationCanceledException or EndOfStreamException or SocketException)
        {
            return (frames, discovers);
        }
    }

    private static async Task<(int, int)> CountDgramAsync(Socket socket, CancellationToken cancel)
    {
        int frames = 0;
        int discovers = 0;
        byte[] frame = new byte[65536];
        try
        {
            while (true)
            {
                int size = await socket.ReceiveAsync(frame, SocketFlags.None, cancel);
                frames++;
                discovers += IsDhcpDiscoverFrom(frame.AsSpan(0, size), s_dgramMac) ? 1 : 0;
            }
        }
        catch (OperationCanceledException)
        {
            return (frames, discovers);
        }
    }

    private static async Task ReadExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancel)
    {
        while (buffer.Length > 0)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, cancel);
            if (n == 0)
            {
                throw new EndOfStreamException();
            }
            buffer = buffer[n..];
        }
    }

    /// <summary>Ethernet II / IPv4 / UDP to port 67 / BOOTP request with DHCP message type 1 (RFC 2131, RFC 2132 §9.6).</summary>
    private static bool IsDhcpDiscoverFrom(ReadOnlySpan<byte> frame, byte[] mac)
    {
        if (frame.Length < 14 + 20 + 8 + 240 || !frame.Slice(6, 6).SequenceEqual(mac) || BinaryPrimitives.ReadUInt16BigEndian(frame[12..]) != 0x0800)
        {
            return false;
        }
        ReadOnlySpan<byte> ip = frame[14..];
        int ihl = (ip[0] & 0x0F) * 4;
        if (ip[9] != 17 || ip.Length < ihl + 8 + 240)
        {
            return false;
        }
        ReadOnlySpan<byte> udp = ip[ihl..];
        if (BinaryPrimitives.ReadUInt16BigEndian(udp[2..]) != 67)
        {
            return false;
        }
        ReadOnlySpan<byte> bootp = udp[8..];
        if (bootp[0] != 1 || !bootp.Slice(28, 6).SequenceEqual(mac) || BinaryPrimitives.ReadUInt32BigEndian(bootp[236..]) != 0x63825363)
        {
            return false;
        }
        ReadOnlySpan<byte> opts = bootp[240..];
        for (int i = 0; i + 1 < opts.Length && opts[i] != 255;)
        {
            if (opts[i] == 0)
            {
                i++;
                continue;
            }
            if (opts[i] == 53 && opts[i + 1] == 1 && i + 2 < opts.Length)
            {
                return opts[i + 2] == 1;
            }
            i += 2 + opts[i + 1];
        }
        return false;
    }
}
