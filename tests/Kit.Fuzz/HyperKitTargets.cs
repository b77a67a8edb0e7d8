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
    /// its payload, no descriptors) and hung up; a thread drains the replies. Without SET_MEM_TABLE's descriptors no
    /// ring can start, so this covers negotiation, ring setup, config space and the error paths. An exception
    /// escaping Run is a finding (the backend would log it as an internal error and drop the frontend).
    /// </summary>
    public static void VhostUserSession(byte[] input)
    {
        var messages = new MemoryStream();
        foreach (ReadOnlyMemory<byte> r in FuzzTargets.Records(input))
        {
            messages.Write(r.Span);
        }
        if (!Sys.CreateSocketPair(out int a, out int b))
        {
            throw new IOException("socketpair failed");
        }
        using var ours = new Socket(new SafeSocketHandle(a, ownsHandle: true));
        using var peer = new Socket(new SafeSocketHandle(b, ownsHandle: true));
        byte[] sent = messages.ToArray();
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
        ReadOnlySpan<byte> rest = sent;
        while (rest.Length > 0)
        {
            rest = rest[peer.Send(rest)..];
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
