using System.Buffers.Binary;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Kit.HyperKit.VhostUser;
using Kit.Linux;

namespace Kit.HyperKit.Tests;

/// <summary>
/// A vhost-user frontend written for the tests: it speaks the protocol itself over one end of a socketpair, owns a
/// memfd of "guest RAM" that it maps too, and can be as hostile as a test wants (raw bytes, bad tables, lying
/// descriptors). Layout of guest memory, two regions from one memfd as QEMU's pc machine does:
/// gpa [0, 0x40000) at file offset 0 and gpa [0x100000, 0x140000) at file offset 0x40000.
/// </summary>
internal sealed class VhostUserTestFrontend : IDisposable
{
    public const ulong FileSize = 0x80000;
    public const ulong UserBase = 0x7f00_0000_0000; // the frontend's "virtual addresses" (any numbers will do)
    public static readonly VhostMemoryRegion[] Regions =
    [
        new(0, 0x40000, UserBase, 0),
        new(0x100000, 0x40000, UserBase + 0x40000, 0x40000),
    ];

    private readonly Socket _socket;
    private readonly int _fd;
    private readonly nint _map;
    private readonly Kit.HyperKit.Memory.GuestMemory _view;

    public VhostUserTestFrontend(Socket socket)
    {
        _socket = socket;
        _fd = (int)socket.SafeHandle.DangerousGetHandle();
        MemFd = Sys.MemfdCreate("kit-test-guest", Sys.MFD_CLOEXEC);
        Assert.True(MemFd >= 0);
        Assert.Equal(0, VhostUserInterop.Ftruncate(MemFd, (long)FileSize));
        nint map = VhostUserInterop.Mmap(0, (nuint)FileSize, VhostUserInterop.PROT_READ | VhostUserInterop.PROT_WRITE, VhostUserInterop.MAP_SHARED, MemFd, 0);
        Assert.NotEqual(-1, map);
        _map = map;
        // Our view of guest RAM goes through the same checked type the backend uses (no unsafe code in tests).
        _view = new Kit.HyperKit.Memory.GuestMemory([
            new Kit.HyperKit.Memory.GuestRegion(Regions[0].GuestPhysAddr, Regions[0].MemorySize, map + (nint)Regions[0].MmapOffset),
            new Kit.HyperKit.Memory.GuestRegion(Regions[1].GuestPhysAddr, Regions[1].MemorySize, map + (nint)Regions[1].MmapOffset)]);
    }

    public int MemFd { get; }

    /// <summary>Our view of guest physical memory (through the same memfd the backend maps).</summary>
    public Span<byte> Gpa(ulong gpa, int length) => _view.GetSpan(gpa, length);

    public static ulong UserAddress(ulong gpa)
    {
        foreach (VhostMemoryRegion r in Regions)
        {
            if (gpa >= r.GuestPhysAddr && gpa < r.GuestPhysAddr + r.MemorySize)
            {
                return r.UserspaceAddr + (gpa - r.GuestPhysAddr);
            }
        }
        throw new ArgumentOutOfRangeException(nameof(gpa));
    }

    public bool SendRaw(ReadOnlySpan<byte> bytes, ReadOnlySpan<int> fds = default) => VhostUserInterop.SendWithFds(_fd, bytes, fds);

    public bool Send(VhostUserRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, bool needReply = false)
    {
        byte[] message = new byte[VhostUserHeader.Length + payload.Length];
        new VhostUserHeader(request, VhostUserFlags.Version | (needReply ? VhostUserFlags.NeedReply : 0), (uint)payload.Length).Write(message);
        payload.CopyTo(message.AsSpan(VhostUserHeader.Length));
        return SendRaw(message, fds);
    }

    /// <summary>Reads one reply (bounded by a receive timeout); null if the backend closed the connection.</summary>
    public (VhostUserHeader Header, byte[] Payload)? Receive()
    {
        _socket.ReceiveTimeout = 5000;
        byte[] header = new byte[VhostUserHeader.Length];
        if (!ReceiveExactly(header))
        {
            return null;
        }
        var h = new VhostUserHeader((VhostUserRequest)BinaryPrimitives.ReadUInt32LittleEndian(header),
            BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4)), BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8)));
        byte[] payload = new byte[h.Size];
        return ReceiveExactly(payload) ? (h, payload) : null;
    }

    private bool ReceiveExactly(byte[] buffer)
    {
        int done = 0;
        try
        {
            while (done < buffer.Length)
            {
                int n = _socket.Receive(buffer, done, buffer.Length - done, SocketFlags.None);
                if (n == 0)
                {
                    return false;
                }
                done += n;
            }
        }
        catch (SocketException)
        {
            return false;
        }
        return true;
    }

    public ulong Request64(VhostUserRequest request)
    {
        Assert.True(Send(request, []));
        var reply = Receive();
        Assert.NotNull(reply);
        Assert.Equal(request, reply.Value.Header.Request);
        Assert.Equal(VhostUserFlags.Version | VhostUserFlags.Reply, reply.Value.Header.Flags);
        return BinaryPrimitives.ReadUInt64LittleEndian(reply.Value.Payload);
    }

    /// <summary>Sends with NEED_REPLY and returns the REPLY_ACK status (0 success), or null when the backend hung up.</summary>
    public ulong? Acked(VhostUserRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        if (!Send(request, payload, fds, needReply: true))
        {
            return null;
        }
        var reply = Receive();
        return reply is null ? null : BinaryPrimitives.ReadUInt64LittleEndian(reply.Value.Payload);
    }

    public static byte[] U64(ulong v)
    {
        byte[] b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        return b;
    }

    public static byte[] State(uint index, uint num)
    {
        byte[] b = new byte[VringState.Length];
        new VringState(index, num).Write(b);
        return b;
    }

    public static byte[] Table(ReadOnlySpan<VhostMemoryRegion> regions)
    {
        byte[] b = new byte[8 + VhostMemoryRegion.Length * regions.Length];
        VhostMemoryTable.Write(b, regions);
        return b;
    }

    /// <summary>Negotiation and a memory table as QEMU does them, with REPLY_ACK.</summary>
    public void Handshake(ulong features)
    {
        ulong offered = Request64(VhostUserRequest.GetFeatures);
        Assert.Equal(features, features & offered);
        Assert.Equal(0UL, Acked(VhostUserRequest.SetOwner, []));
        ulong protocol = Request64(VhostUserRequest.GetProtocolFeatures);
        Assert.Equal(0UL, Acked(VhostUserRequest.SetProtocolFeatures, U64(protocol & VhostUserProtocolFeatures.ReplyAck)));
        Assert.Equal(0UL, Acked(VhostUserRequest.SetFeatures, U64(features)));
        Assert.Equal(0UL, Acked(VhostUserRequest.SetMemTable, Table(Regions), [MemFd, MemFd]));
    }

    /// <summary>Configures and starts ring <paramref name="index"/> of <paramref name="size"/> entries at gpa <paramref name="gpa"/>.</summary>
    public (int Kick, int Call) StartRing(uint index, ushort size, ulong gpa)
    {
        Assert.Equal(0UL, Acked(VhostUserRequest.SetVringNum, State(index, size)));
        byte[] addr = new byte[VringAddress.Length];
        new VringAddress(index, 0, UserAddress(gpa), UserAddress(UsedOf(gpa, size)), UserAddress(AvailOf(gpa, size)), 0).Write(addr);
        Assert.Equal(0UL, Acked(VhostUserRequest.SetVringAddr, addr));
        Assert.Equal(0UL, Acked(VhostUserRequest.SetVringBase, State(index, 0)));
        int call = Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK);
        int kick = Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK);
        Assert.Equal(0UL, Acked(VhostUserRequest.SetVringCall, U64(index), [call]));
        Assert.Equal(0UL, Acked(VhostUserRequest.SetVringKick, U64(index), [kick]));
        Assert.Equal(0UL, Acked(VhostUserRequest.SetVringEnable, State(index, 1)));
        return (kick, call);
    }

    public static ulong AvailOf(ulong ring, ushort size) => ring + 16UL * size;

    public static ulong UsedOf(ulong ring, ushort size) => (AvailOf(ring, size) + 6 + 2UL * size + 3) & ~3UL;

    public void WriteDescriptor(ulong ring, ushort i, ulong addr, uint len, ushort flags, ushort next)
    {
        Span<byte> d = Gpa(ring + 16UL * i, 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>Puts head into the avail ring and bumps avail.idx.</summary>
    public void MakeAvailable(ulong ring, ushort size, ushort head)
    {
        Span<byte> avail = Gpa(AvailOf(ring, size), 4 + 2 * size);
        ushort idx = BinaryPrimitives.ReadUInt16LittleEndian(avail[2..]);
        BinaryPrimitives.WriteUInt16LittleEndian(avail[(4 + 2 * (idx % size))..], head);
        Thread.MemoryBarrier();
        BinaryPrimitives.WriteUInt16LittleEndian(avail[2..], (ushort)(idx + 1));
    }

    public ushort UsedIdx(ulong ring, ushort size) => BinaryPrimitives.ReadUInt16LittleEndian(Gpa(UsedOf(ring, size) + 2, 2));

    public (uint Id, uint Len) UsedEntry(ulong ring, ushort size, int i)
    {
        Span<byte> e = Gpa(UsedOf(ring, size) + 4 + 8UL * (ulong)(i % size), 8);
        return (BinaryPrimitives.ReadUInt32LittleEndian(e), BinaryPrimitives.ReadUInt32LittleEndian(e[4..]));
    }

    /// <summary>Waits (bounded) until used.idx reaches <paramref name="target"/>.</summary>
    public bool WaitUsed(ulong ring, ushort size, ushort target, int timeoutMs = 5000)
    {
        long deadline = Environment.TickCount64 + timeoutMs;
        while (Environment.TickCount64 < deadline)
        {
            if (UsedIdx(ring, size) == target)
            {
                return true;
            }
            Thread.Sleep(5);
        }
        return false;
    }

    public static void Signal(int eventFd) => Assert.True(Sys.SignalEventFd(eventFd));

    public void Close() => _socket.Dispose();

    public void Dispose()
    {
        _socket.Dispose();
        _view.Dispose();
        _ = VhostUserInterop.Munmap(_map, (nuint)FileSize);
        _ = Sys.Close(MemFd);
    }

    public static (Socket Backend, Socket Frontend) Pair()
    {
        Assert.True(Sys.CreateSocketPair(out int a, out int b));
        return (new Socket(new SafeSocketHandle(a, true)), new Socket(new SafeSocketHandle(b, true)));
    }

    public static SafeHandle Wrap(int fd) => new Microsoft.Win32.SafeHandles.SafeFileHandle(fd, true);
}
