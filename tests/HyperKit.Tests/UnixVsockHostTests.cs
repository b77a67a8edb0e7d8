using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Kit.HyperKit.Devices.Virtio.Vsock;

namespace Kit.HyperKit.Tests;

/// <summary>
/// The Unix-socket host side (Firecracker's CONNECT/OK protocol) with real host sockets: a scripted guest drives the
/// device through the virtio-pci transport while host clients and listeners speak over Unix sockets. No KVM needed.
/// </summary>
public sealed class UnixVsockHostTests : IDisposable
{
    private const uint GuestPort = 1234, GuestEphemeral = 40000;
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-vsock-").FullName;
    private readonly UnixVsockHost _host;
    private readonly VsockTestGuest _guest;
    private int _seen;

    public UnixVsockHostTests()
    {
        _host = new UnixVsockHost(Path.Combine(_dir, "v.sock"));
        _guest = new VsockTestGuest(_host);
        _host.Start(_guest.Device);
        _guest.BringUp();
    }

    public void Dispose()
    {
        _host.Dispose();
        _guest.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    /// <summary>Waits for the next packet matching <paramref name="match"/> after the ones already looked at.</summary>
    private VsockHeader Expect(Func<VsockHeader, bool> match, string what)
    {
        VsockHeader found = default;
        _guest.WaitFor(() =>
        {
            while (_seen < _guest.Received.Count)
            {
                VsockHeader h = _guest.Received[_seen++].Header;
                if (match(h))
                {
                    found = h;
                    return true;
                }
            }
            return false;
        }, what);
        return found;
    }

    /// <summary>
    /// The guest end of a stream receiving until the host's SHUTDOWN(SEND) (or RST), reading every byte at once and
    /// returning credit every 16 KiB as Linux does. Credit updates it sees from the device are recorded.
    /// </summary>
    private byte[] GuestReceiveUntilShutdown(uint local, uint peer, GuestCredit credit)
    {
        var data = new MemoryStream();
        uint fwd = 0, announced = 0;
        bool done = false;
        long end = Environment.TickCount64 + 20_000;
        while (!done)
        {
            Assert.True(Environment.TickCount64 < end, $"guest receive stalled after {data.Length} bytes: {_guest.Describe()}");
            _guest.Poll();
            while (_seen < _guest.Received.Count)
            {
                (VsockHeader h, byte[] payload) = _guest.Received[_seen++];
                if (h.DstPort != local || h.SrcPort != peer)
                {
                    continue;
                }
                credit.Update(h);
                if (h.Op == VsockOp.Rw)
                {
                    data.Write(payload);
                    fwd += (uint)payload.Length;
                }
                else if (h.Op is VsockOp.Shutdown or VsockOp.Rst)
                {
                    done = true;
                }
            }
            if (fwd - announced >= 16 * 1024)
            {
                announced = fwd;
                _guest.Send(VsockOp.CreditUpdate, local, peer, bufAlloc: GuestCredit.GuestBufAlloc, fwdCnt: fwd);
            }
            Thread.Sleep(1);
        }
        credit.GuestFwd = fwd;
        return data.ToArray();
    }

    /// <summary>The guest end sending <paramref name="data"/> in 4 KiB packets within the device's credit.</summary>
    private void GuestSend(uint local, uint peer, byte[] data, GuestCredit credit)
    {
        int sent = 0;
        long end = Environment.TickCount64 + 20_000;
        while (sent < data.Length)
        {
            Assert.True(Environment.TickCount64 < end, $"guest send stalled after {sent} bytes (credit {credit.Available(sent)}): {_guest.Describe()}");
            long available = credit.Available(sent);
            if (available <= 0)
            {
                _guest.Poll();
                while (_seen < _guest.Received.Count)
                {
                    (VsockHeader h, _) = _guest.Received[_seen++];
                    if (h.DstPort == local && h.SrcPort == peer)
                    {
                        credit.Update(h);
                    }
                }
                Thread.Sleep(1);
                continue;
            }
            int n = (int)Math.Min(Math.Min(available, 4096), data.Length - sent);
            _guest.Send(VsockOp.Rw, local, peer, data.AsSpan(sent, n), bufAlloc: GuestCredit.GuestBufAlloc, fwdCnt: credit.GuestFwd);
            sent += n;
        }
    }

    private sealed class GuestCredit
    {
        public const uint GuestBufAlloc = 64 * 1024;

        public uint PeerBufAlloc { get; set; }

        public uint PeerFwd { get; set; }

        public uint GuestFwd { get; set; }

        public void Update(VsockHeader h)
        {
            PeerBufAlloc = h.BufAlloc;
            PeerFwd = h.FwdCnt;
        }

        public long Available(int sent) => (long)PeerBufAlloc - (uint)((uint)sent - PeerFwd);
    }

    private static async Task<string> ReadLineAsync(Socket socket)
    {
        var line = new StringBuilder();
        byte[] one = new byte[1];
        while (true)
        {
            int n = await socket.ReceiveAsync(one, SocketFlags.None, Cancel);
            if (n == 0 || one[0] == '\n')
            {
                return line.ToString();
            }
            line.Append((char)one[0]);
        }
    }

    private static async Task<byte[]> ReadToEndAsync(Socket socket)
    {
        var data = new MemoryStream();
        byte[] buffer = new byte[65536];
        while (true)
        {
            int n = await socket.ReceiveAsync(buffer, SocketFlags.None, Cancel);
            if (n == 0)
            {
                return data.ToArray();
            }
            data.Write(buffer, 0, n);
        }
    }

    [Fact]
    public async Task HostClientReachesAGuestListenerAndDataCrossesBothWaysWithHalfClose()
    {
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(_host.Path), Cancel);
        await client.SendAsync("CONNECT 1234\n"u8.ToArray(), SocketFlags.None, Cancel);

        VsockHeader request = Expect(h => h.Op == VsockOp.Request, "REQUEST");
        Assert.Equal((VirtioVsock.FirstHostPort, GuestPort), (request.SrcPort, request.DstPort));
        var credit = new GuestCredit();
        credit.Update(request);
        _guest.Send(VsockOp.Response, GuestPort, request.SrcPort, bufAlloc: GuestCredit.GuestBufAlloc);
        Assert.Equal($"OK {VirtioVsock.FirstHostPort}", await ReadLineAsync(client));

        // Host to guest: more than the guest's 64 KiB window, then the client half-closes.
        byte[] up = RandomNumberGenerator.GetBytes(300 * 1024);
        Task upload = Task.Run(async () =>
        {
            await client.SendAsync(up, SocketFlags.None, Cancel);
            client.Shutdown(SocketShutdown.Send);
        }, Cancel);
        byte[] atGuest = await Task.Run(() => GuestReceiveUntilShutdown(GuestPort, request.SrcPort, credit), Cancel);
        await upload;
        Assert.Equal(SHA256.HashData(up), SHA256.HashData(atGuest));

        // Guest to host over the half-closed connection: more than the device's 256 KiB buffer, then a full close.
        byte[] down = RandomNumberGenerator.GetBytes(600 * 1024);
        Task<byte[]> download = ReadToEndAsync(client);
        await Task.Run(() => GuestSend(GuestPort, request.SrcPort, down, credit), Cancel);
        _guest.Send(VsockOp.Shutdown, GuestPort, request.SrcPort, flags: Vsock.ShutdownBoth, bufAlloc: GuestCredit.GuestBufAlloc, fwdCnt: credit.GuestFwd);
        byte[] atHost = await download.WaitAsync(TimeSpan.FromSeconds(20), Cancel);
        Assert.Equal(SHA256.HashData(down), SHA256.HashData(atHost));
        // The device answers the full shutdown with RST once the bytes are out.
        Expect(h => h.Op == VsockOp.Rst && h.DstPort == GuestPort, "RST after the guest's full SHUTDOWN");
        _guest.WaitFor(() => _guest.Device.ConnectionCount == 0, "connection table to empty");
    }

    [Fact]
    public async Task GuestConnectionReachesAHostListenerAtPathUnderscorePort()
    {
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(_host.Path + "_5000"));
        listener.Listen(1);
        Task<Socket> accept = listener.AcceptAsync(Cancel).AsTask();

        _guest.Send(VsockOp.Request, GuestEphemeral, 5000, bufAlloc: GuestCredit.GuestBufAlloc);
        using Socket server = await accept.WaitAsync(TimeSpan.FromSeconds(10), Cancel);
        VsockHeader response = Expect(h => h.Op == VsockOp.Response, "RESPONSE");
        Assert.Equal((5000u, GuestEphemeral), (response.SrcPort, response.DstPort));
        var credit = new GuestCredit();
        credit.Update(response);

        byte[] up = RandomNumberGenerator.GetBytes(100 * 1024);
        Task<byte[]> serverReads = ReadToEndAsync(server);
        await Task.Run(() => GuestSend(GuestEphemeral, 5000, up, credit), Cancel);
        _guest.Send(VsockOp.Shutdown, GuestEphemeral, 5000, flags: Vsock.ShutdownSend, bufAlloc: GuestCredit.GuestBufAlloc);
        Assert.Equal(SHA256.HashData(up), SHA256.HashData(await serverReads.WaitAsync(TimeSpan.FromSeconds(20), Cancel)));

        byte[] down = RandomNumberGenerator.GetBytes(100 * 1024);
        await server.SendAsync(down, SocketFlags.None, Cancel);
        server.Shutdown(SocketShutdown.Both);
        byte[] atGuest = await Task.Run(() => GuestReceiveUntilShutdown(GuestEphemeral, 5000, credit), Cancel);
        Assert.Equal(SHA256.HashData(down), SHA256.HashData(atGuest));
    }

    [Fact]
    public void GuestConnectionWithNoHostListenerIsReset()
    {
        _guest.Send(VsockOp.Request, GuestEphemeral, 6000);
        VsockHeader rst = Expect(h => h.Op != VsockOp.CreditUpdate, "an answer to REQUEST");
        Assert.Equal((VsockOp.Rst, 6000u, GuestEphemeral), (rst.Op, rst.SrcPort, rst.DstPort));
    }

    [Fact]
    public async Task HostClientIsClosedWithoutOkWhenTheGuestRefuses()
    {
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(_host.Path), Cancel);
        await client.SendAsync("CONNECT 4321\n"u8.ToArray(), SocketFlags.None, Cancel);
        VsockHeader request = Expect(h => h.Op == VsockOp.Request, "REQUEST");
        _guest.Send(VsockOp.Rst, 4321, request.SrcPort);
        Assert.Empty(await ReadToEndAsync(client).WaitAsync(TimeSpan.FromSeconds(10), Cancel));
    }

    [Theory]
    [InlineData("HELLO 1\n")]
    [InlineData("CONNECT\n")]
    [InlineData("CONNECT 99999999999\n")]
    [InlineData("CONNECT 12 34 and much more text than a connect line can ever need to hold\n")]
    public async Task BadConnectLinesAreClosed(string line)
    {
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await client.ConnectAsync(new UnixDomainSocketEndPoint(_host.Path), Cancel);
        await client.SendAsync(Encoding.ASCII.GetBytes(line), SocketFlags.None, Cancel);
        // Closed: EOF, or ECONNRESET when the host closed with part of the long line still unread (Unix sockets).
        try
        {
            Assert.Empty(await ReadToEndAsync(client).WaitAsync(TimeSpan.FromSeconds(10), Cancel));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionReset)
        {
        }
        Assert.Equal(0, _guest.Device.ConnectionCount);
    }

    [Fact]
    public void ConnectLineParsing()
    {
        Assert.True(UnixVsockHost.TryParseConnect("CONNECT 52"u8, out uint port));
        Assert.Equal(52u, port);
        Assert.True(UnixVsockHost.TryParseConnect("CONNECT 4294967295\r"u8, out port));
        Assert.Equal(uint.MaxValue, port);
        Assert.False(UnixVsockHost.TryParseConnect("CONNECT -1"u8, out _));
        Assert.False(UnixVsockHost.TryParseConnect("connect 52"u8, out _));
        Assert.False(UnixVsockHost.TryParseConnect("CONNECT  52"u8, out _));
    }

    [Fact]
    public void AStaleSocketFileIsReplacedButARegularFileIsRefused()
    {
        string stale = Path.Combine(_dir, "stale.sock");
        using (var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            s.Bind(new UnixDomainSocketEndPoint(stale));
        }
        using (var replacing = new UnixVsockHost(stale))
        {
            replacing.Start(new VirtioVsock(3, replacing));
        }
        string file = Path.Combine(_dir, "file");
        File.WriteAllText(file, "precious");
        using var refusing = new UnixVsockHost(file);
        Assert.Throws<IOException>(() => refusing.Start(new VirtioVsock(3, refusing)));
        Assert.Equal("precious", File.ReadAllText(file));
    }
}
