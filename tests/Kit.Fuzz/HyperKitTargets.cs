using System.Buffers.Binary;
using System.Net.Sockets;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Memory;
using Kit.HyperKit.VhostUser;
using Kit.Linux;
using Microsoft.Extensions.Logging.Abstractions;

namespace Kit.Fuzz;

internal static class HyperKitTargets
{
    private const int MemorySize = 64 * 1024;
    private const int QueueHeader = 10;
    private static GuestMemory? s_memory;

    /// <summary>
    /// virtio-splitqueue: a split queue over 64 KiB of guest memory whose bytes come from the input. The first
    /// ten bytes choose the queue: size (u16, reduced to at most 256, not necessarily valid), descriptor table,
    /// available and used ring addresses (u16 each, anywhere in the 64 KiB), and flags (EVENT_IDX, deferred
    /// publishing). The rest is the memory image from address 0. The device pops every chain, touches every
    /// segment (reads readable ones, fills writable ones), returns it used and asks whether to interrupt; then the
    /// "driver" bumps avail.idx by flags' high bits and the device goes again.
    /// </summary>
    public static void SplitQueueChains(byte[] input)
    {
        if (input.Length < QueueHeader)
        {
            return;
        }
        GuestMemory memory = s_memory ??= new GuestMemory(MemorySize);
        Span<byte> ram = memory.GetSpan(0, MemorySize);
        ram.Clear();
        input.AsSpan(QueueHeader, Math.Min(input.Length - QueueHeader, MemorySize)).CopyTo(ram);
        ReadOnlySpan<byte> h = input;
        byte flags = h[8];
        var queue = new SplitQueue(memory)
        {
            Size = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(h) % (SplitQueue.MaxSize + 1)),
            DescTable = BinaryPrimitives.ReadUInt16LittleEndian(h[2..]),
            AvailRing = BinaryPrimitives.ReadUInt16LittleEndian(h[4..]),
            UsedRing = BinaryPrimitives.ReadUInt16LittleEndian(h[6..]),
            EventIdx = (flags & 1) != 0,
            Enabled = true,
        };
        _ = queue.RingsValid;
        var segments = new DescriptorSegment[SplitQueue.MaxSize];
        for (int round = 0; round < 2; round++)
        {
            // At most one pass over the ring per round: TryPop itself must stop (a hang here is a finding).
            for (int i = 0; i <= SplitQueue.MaxSize && queue.TryPop(segments, out ushort head, out int count, out long readable, out long writable); i++)
            {
                uint written = 0;
                for (int s = 0; s < count; s++)
                {
                    DescriptorSegment seg = segments[s];
                    if (!memory.TryGetSpan(seg.Address, (int)Math.Min(seg.Length, (uint)MemorySize), out Span<byte> span))
                    {
                        throw new FuzzFindingException($"TryPop returned segment {seg} outside guest memory");
                    }
                    if (seg.DeviceWritable)
                    {
                        span.Fill(0xA5);
                        written += (uint)span.Length;
                    }
                    else
                    {
                        _ = span.IndexOf((byte)0xFF);
                    }
                }
                if (readable < 0 || writable < 0 || readable + writable > SplitQueue.MaxChainBytes)
                {
                    throw new FuzzFindingException($"chain byte counts out of range: {readable} readable, {writable} writable");
                }
                if ((flags & 2) != 0)
                {
                    queue.PushUsedDeferred(head, written);
                }
                else
                {
                    queue.PushUsed(head, written);
                }
            }
            queue.PublishUsed();
            queue.ShouldInterrupt();
            if (queue.RingsValid)
            {
                memory.TryReadU16(queue.AvailRing + 2, out ushort idx);
                memory.TryWriteU16(queue.AvailRing + 2, (ushort)(idx + (flags >> 2)));
            }
        }
        _ = queue.Broken;
        _ = queue.LastChainError;
    }

    /// <summary>
    /// vhost-user-message: input[0] picks a codec, the rest is its input: 0 the 12-byte header, 1 VringState,
    /// 2 VringAddress, 3 the memory table (every region read back), 4 the config-space view. Each parsed value is
    /// written back and parsed again.
    /// </summary>
    public static void VhostUserMessages(byte[] input)
    {
        if (input.Length == 0)
        {
            return;
        }
        ReadOnlySpan<byte> p = input.AsSpan(1);
        byte[] out1 = new byte[8192];
        switch (input[0] % 5)
        {
            case 0:
                if (VhostUserHeader.TryParse(p, out VhostUserHeader header, out _))
                {
                    header.Write(out1);
                    if (!VhostUserHeader.TryParse(out1.AsSpan(0, VhostUserHeader.Length), out VhostUserHeader again, out VhostUserError e) || again != header)
                    {
                        throw new FuzzFindingException($"header {header} does not round-trip ({e})");
                    }
                    _ = header.NeedReply;
                }
                break;
            case 1:
                if (VringState.TryParse(p, out VringState state))
                {
                    state.Write(out1);
                }
                break;
            case 2:
                if (VringAddress.TryParse(p, out VringAddress address))
                {
                    address.Write(out1);
                }
                break;
            case 3:
                if (VhostMemoryTable.TryParse(p, out VhostMemoryTable table, out _))
                {
                    var regions = new VhostMemoryRegion[table.Count];
                    for (int i = 0; i < table.Count; i++)
                    {
                        regions[i] = table[i];
                    }
                    int n = VhostMemoryTable.Write(out1, regions);
                    if (!VhostMemoryTable.TryParse(out1.AsSpan(0, n), out VhostMemoryTable back, out VhostUserError e) || back.Count != table.Count)
                    {
                        throw new FuzzFindingException($"memory table of {table.Count} regions does not round-trip ({e})");
                    }
                }
                break;
            default:
                if (VhostConfigView.TryParse(p, out VhostConfigView view, out _))
                {
                    _ = view.Offset + view.Size + view.Flags + (uint)view.Data.Length;
                }
                break;
        }
    }

    /// <summary>
    /// vhost-user-session: a whole backend session for a virtio-net device (null backend) on one end of a socket
    /// pair; the other end sent the input's records as messages ([u16 length][message bytes]: a 12-byte header and
    /// its payload) and hung up; a thread drains the replies. Descriptors go with the messages that carry them, so the
    /// rings really start: SET_MEM_TABLE carries one memfd of <see cref="GuestBytes"/> per region it lists (at most
    /// eight), SET_VRING_KICK/CALL/ERR an eventfd unless the payload says NOFD. A record whose request is 0 (NONE) is
    /// not sent: its payload is the memfds' initial contents (descriptor tables, rings, buffers), so a kick processes
    /// fuzzer-made chains synchronously (SET_VRING_KICK kicks once). An exception escaping Run is a finding (the
    /// backend would log it as an internal error and drop the frontend).
    /// </summary>
    public static void VhostUserSession(byte[] input)
    {
        if (!Sys.CreateSocketPair(out int a, out int b))
        {
            throw new IOException("socketpair failed");
        }
        using var ours = new Socket(new SafeSocketHandle(a, ownsHandle: true));
        using var peer = new Socket(new SafeSocketHandle(b, ownsHandle: true));
        var drain = new Thread(() =>
        {
            byte[] sink = new byte[65536];
            try
            {
                while (peer.Receive(sink) > 0)
                {
                }
            }
            catch (SocketException)
            {
            }
        }) { IsBackground = true };
        drain.Start();
        byte[] image = [];
        foreach (ReadOnlyMemory<byte> r in FuzzTargets.Records(input))
        {
            ReadOnlySpan<byte> m = r.Span;
            uint request = m.Length >= 4 ? BinaryPrimitives.ReadUInt32LittleEndian(m) : uint.MaxValue;
            if (request == 0)
            {
                image = m[Math.Min(m.Length, VhostUserHeader.Length)..].ToArray();
                continue;
            }
            int[] fds = DescriptorsFor((VhostUserRequest)request, m, image);
            try
            {
                if (!VhostUserInterop.SendWithFds((int)peer.Handle, m, fds))
                {
                    break; // the session hung up on us
                }
            }
            finally
            {
                Sys.CloseAll(fds);
            }
        }
        peer.Shutdown(SocketShutdown.Send);
        using var device = new VirtioNet(new NullNetBackend(), [0x02, 0, 0, 0, 0, 1]);
        using (var session = new Kit.HyperKit.VhostUser.VhostUserSession(device, ours, NullLogger.Instance))
        {
            session.Run();
        }
        // The session disposed its socket: the drain sees the end of the stream.
        if (!drain.Join(TimeSpan.FromSeconds(10)))
        {
            throw new FuzzFindingException("reply drain did not end");
        }
    }

    /// <summary>Size of each memfd region the vhost-user-session target passes (small: the fuzzer writes its start).</summary>
    internal const int GuestBytes = 64 * 1024;

    private static int[] DescriptorsFor(VhostUserRequest request, ReadOnlySpan<byte> message, byte[] image)
    {
        ReadOnlySpan<byte> payload = message[Math.Min(message.Length, VhostUserHeader.Length)..];
        switch (request)
        {
            case VhostUserRequest.SetMemTable when payload.Length >= 4:
                {
                    int count = (int)Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(payload), 8);
                    int[] fds = new int[count];
                    for (int i = 0; i < count; i++)
                    {
                        fds[i] = Memfd(image);
                    }
                    return fds;
                }
            case VhostUserRequest.SetVringKick or VhostUserRequest.SetVringCall or VhostUserRequest.SetVringErr
                when payload.Length >= 8 && (BinaryPrimitives.ReadUInt64LittleEndian(payload) & VringFdPayload.NoFd) == 0:
                {
                    int fd = Sys.EventFd(0, 0x80000 /* EFD_CLOEXEC */);
                    if (fd < 0)
                    {
                        throw new IOException($"eventfd failed: errno {Sys.LastErrno}");
                    }
                    return [fd];
                }
            default:
                return [];
        }
    }

    private static int Memfd(byte[] image)
    {
        int fd = Sys.MemfdCreate("kit-fuzz-guest", Sys.MFD_CLOEXEC);
        if (fd < 0 || VhostUserInterop.Ftruncate(fd, GuestBytes) != 0)
        {
            throw new IOException($"memfd failed: errno {Sys.LastErrno}");
        }
        using (var file = File.OpenHandle($"/proc/self/fd/{fd}", FileMode.Open, FileAccess.Write))
        {
            RandomAccess.Write(file, image.AsSpan(0, Math.Min(image.Length, GuestBytes)), 0);
        }
        return fd;
    }

    private sealed class NullNetBackend : INetBackend
    {
        public NetBackendInfo Info { get; } = new(Offload: true, Mtu: 1500);

        public void Attach(NetPort port)
        {
        }

        public void Dispose()
        {
        }
    }
}
