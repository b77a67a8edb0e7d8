using System.Buffers.Binary;
using System.Net.Sockets;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Memory;
using Kit.Linux;
using Microsoft.Extensions.Logging;

namespace Kit.HyperKit.VhostUser;

/// <summary>
/// One frontend connection: the message loop (on the thread that calls <see cref="Run"/>), the memory table, the
/// per-ring state and a kick thread that polls the rings' kick eventfds. Everything the frontend sends is hostile:
/// sizes, indices, addresses and descriptors are checked; a violation ends the connection with a reason.
/// Locking: <see cref="_lock"/> guards the rings, the memory and the device's queue processing (kicks from the kick
/// thread, device-originated work from device threads, and the message loop's changes all take it), so a memory
/// table is never replaced while a span into it is in use.
/// </summary>
internal sealed partial class VhostUserSession : IDisposable
{
    /// <summary>VHOST_USER_F_PROTOCOL_FEATURES (bit 30 of GET_FEATURES): the frontend may then use GET_PROTOCOL_FEATURES.</summary>
    public const ulong ProtocolFeaturesBit = 1UL << 30;

    /// <summary>
    /// What we offer: REPLY_ACK, RESET_DEVICE, and CONFIG for devices whose configuration space the backend owns
    /// (vhost-user-vsock reads guest_cid through it). Not for net: QEMU's virtio-net keeps its own (MAC, status) and
    /// warns at start when a net backend offers CONFIG. No MQ.
    /// </summary>
    public ulong OfferedProtocolFeatures =>
        VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.ResetDevice
        | (_device.DeviceType == NetDeviceType ? 0 : VhostUserProtocolFeatures.Config);

    private const ushort NetDeviceType = 1;

    private readonly VirtioDevice _device;
    private readonly Socket _socket;
    private readonly int _fd;
    private readonly ILogger _log;
    private readonly Lock _lock = new();
    private readonly Ring[] _rings;
    private readonly byte[] _payload = new byte[VhostUserHeader.MaxPayload];
    private readonly byte[] _reply = new byte[VhostUserHeader.Length + VhostUserHeader.MaxPayload];
    private readonly int _wakeFd;
    private GuestMemory? _memory;
    private (nint Address, nuint Length)[] _mappings = [];
    private VhostMemoryRegion[] _table = [];
    private ulong _ackedFeatures;
    private ulong _protocolFeatures;
    private bool _featuresSet;
    private volatile bool _stopping;
    private Thread? _kickThread;

    public VhostUserSession(VirtioDevice device, Socket socket, ILogger log)
    {
        _device = device;
        _socket = socket;
        _fd = (int)socket.SafeHandle.DangerousGetHandle();
        _log = log;
        _rings = new Ring[_device.QueueCount];
        for (int i = 0; i < _rings.Length; i++)
        {
            _rings[i] = new Ring();
        }
        _wakeFd = Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK);
    }

    /// <summary>Features offered in GET_FEATURES: the device's, the transport's ring features, PROTOCOL_FEATURES.</summary>
    public ulong OfferedFeatures => _device.DeviceFeatures | VirtioFeatures.Version1 | VirtioFeatures.EventIdx | ProtocolFeaturesBit;

    private sealed class Ring
    {
        public uint Num;
        public VringAddress Address;
        public bool AddressSet;
        public ushort Base;
        public int KickFd = -1, CallFd = -1, ErrFd = -1;
        public bool Enabled;
        public bool Started;
        public SplitQueue? Queue;
        public bool BrokenReported;
    }

    /// <summary>Serves until the frontend hangs up (null) or breaks the protocol (the reason).</summary>
    public string? Run()
    {
        if (_wakeFd < 0)
        {
            return "eventfd failed";
        }
        _kickThread = new Thread(KickLoop) { IsBackground = true, Name = "vhost-user kicks" };
        _kickThread.Start();
        Span<byte> header = stackalloc byte[VhostUserHeader.Length];
        Span<int> fds = stackalloc int[VhostUserInterop.MaxFds];
        while (!_stopping)
        {
            int n = VhostUserInterop.ReceiveWithFds(_fd, header, fds, out int fdCount, out bool tooMany);
            if (n == 0 || (n < 0 && _stopping))
            {
                return null;
            }
            if (n < 0)
            {
                return n == -104 ? null : $"recvmsg failed (errno {-n})"; // ECONNRESET: the frontend died
            }
            try
            {
                if (tooMany)
                {
                    return "a message carried more descriptors than any request takes";
                }
                if (n < header.Length && !VhostUserInterop.ReceiveExact(_fd, header[n..]))
                {
                    return "connection closed inside a message header";
                }
                if (!VhostUserHeader.TryParse(header, out VhostUserHeader h, out VhostUserError error))
                {
                    return $"bad header ({error}, request {h.Request}, size {h.Size})";
                }
                Span<byte> payload = _payload.AsSpan(0, (int)h.Size);
                if (!VhostUserInterop.ReceiveExact(_fd, payload))
                {
                    return $"connection closed inside the payload of {h.Request}";
                }
                string? failure = Handle(h, payload, fds[..fdCount], ref fdCount);
                if (failure is not null)
                {
                    return failure;
                }
            }
            finally
            {
                // Whatever the handler did not keep is closed here (it sets fdCount to 0 once it owns them).
                Sys.CloseAll(fds[..fdCount]);
            }
        }
        return null;
    }

    /// <summary>
    /// Handles one request. Returns null to go on, or why the connection must end. Takes ownership of the descriptors
    /// it keeps by setting <paramref name="fdCount"/> to 0 (and closing the rest itself).
    /// </summary>
    private string? Handle(VhostUserHeader h, ReadOnlySpan<byte> p, ReadOnlySpan<int> fds, ref int fdCount)
    {
        switch (h.Request)
        {
            case VhostUserRequest.GetFeatures:
                return ReplyU64(h, OfferedFeatures);
            case VhostUserRequest.SetFeatures:
                {
                    if (!TryU64(p, out ulong features))
                    {
                        return "SET_FEATURES without a u64";
                    }
                    return Ack(h, SetFeatures(features));
                }
            case VhostUserRequest.GetProtocolFeatures:
                return ReplyU64(h, OfferedProtocolFeatures);
            case VhostUserRequest.SetProtocolFeatures:
                {
                    if (!TryU64(p, out ulong features))
                    {
                        return "SET_PROTOCOL_FEATURES without a u64";
                    }
                    if ((features & ~OfferedProtocolFeatures) != 0)
                    {
                        return $"SET_PROTOCOL_FEATURES 0x{features:x} asks for what we did not offer";
                    }
                    _protocolFeatures = features;
                    return Ack(h, true);
                }
            case VhostUserRequest.SetOwner:
                return Ack(h, true);
            case VhostUserRequest.ResetOwner:
            case VhostUserRequest.ResetDevice:
                lock (_lock)
                {
                    ResetDeviceState();
                }
                return Ack(h, true);
            case VhostUserRequest.SetMemTable:
                {
                    string? failure = SetMemTable(p, fds);
                    fdCount = 0; // SetMemTable closed every descriptor
                    if (failure is not null)
                    {
                        // vhost-user.rst, REPLY_ACK: a failed SET_MEM_TABLE is reported; we also end the session, since
                        // the frontend now believes in a table we do not have.
                        _ = Ack(h, false);
                        return failure;
                    }
                    return Ack(h, true);
                }
            case VhostUserRequest.SetVringNum:
                {
                    if (!VringState.TryParse(p, out VringState s) || !TryRing(s.Index, out Ring? ring))
                    {
                        return "SET_VRING_NUM: short payload or no such ring";
                    }
                    if (s.Num == 0 || s.Num > _device.QueueMaxSize || (s.Num & (s.Num - 1)) != 0)
                    {
                        _ = Ack(h, false);
                        return $"SET_VRING_NUM {s.Num} for ring {s.Index}: not a power of two up to {_device.QueueMaxSize}";
                    }
                    lock (_lock)
                    {
                        ring.Num = s.Num;
                    }
                    return Ack(h, true);
                }
            case VhostUserRequest.SetVringAddr:
                {
                    if (!VringAddress.TryParse(p, out VringAddress a) || !TryRing(a.Index, out Ring? ring))
                    {
                        return "SET_VRING_ADDR: short payload or no such ring";
                    }
                    lock (_lock)
                    {
                        // The addresses are the frontend's virtual addresses; they must translate through the memory
                        // table we hold (vhost-user.rst, "Vring address description").
                        if (!Translate(a.Descriptor, out _) || !Translate(a.Available, out _) || !Translate(a.Used, out _))
                        {
                            _ = Ack(h, false);
                            return $"SET_VRING_ADDR for ring {a.Index}: an address is outside the memory table";
                        }
                        ring.Address = a;
                        ring.AddressSet = true;
                    }
                    return Ack(h, true);
                }
            case VhostUserRequest.SetVringBase:
                {
                    if (!VringState.TryParse(p, out VringState s) || !TryRing(s.Index, out Ring? ring) || s.Num > ushort.MaxValue)
                    {
                        return "SET_VRING_BASE: short payload, no such ring or an index beyond 16 bits";
                    }
                    lock (_lock)
                    {
                        ring.Base = (ushort)s.Num;
                    }
                    return Ack(h, true);
                }
            case VhostUserRequest.GetVringBase:
                {
                    if (!VringState.TryParse(p, out VringState s) || !TryRing(s.Index, out Ring? ring))
                    {
                        return "GET_VRING_BASE: short payload or no such ring";
                    }
                    ushort next;
                    lock (_lock)
                    {
                        // "Stops the vring and returns the current descriptor index" (vhost-user.rst, GET_VRING_BASE).
                        next = ring.Queue?.NextAvail ?? ring.Base;
                        ring.Started = false;
                        ring.Queue = null;
                        ring.Base = next;
                        CloseFd(ref ring.KickFd);
                    }
                    Wake();
                    Span<byte> state = stackalloc byte[VringState.Length];
                    new VringState(s.Index, next).Write(state);
                    return Reply(h, state);
                }
            case VhostUserRequest.SetVringKick:
            case VhostUserRequest.SetVringCall:
            case VhostUserRequest.SetVringErr:
                {
                    if (!TryU64(p, out ulong v) || !TryRing((uint)(v & VringFdPayload.IndexMask), out Ring? ring))
                    {
                        return $"{h.Request}: short payload or no such ring";
                    }
                    bool noFd = (v & VringFdPayload.NoFd) != 0;
                    if (noFd ? fds.Length != 0 : fds.Length != 1)
                    {
                        return $"{h.Request} for ring {v & VringFdPayload.IndexMask}: {fds.Length} descriptors where {(noFd ? 0 : 1)} belong";
                    }
                    if (h.Request == VhostUserRequest.SetVringKick && noFd)
                    {
                        // Polling mode (no kick eventfd) is not supported: we could only spin.
                        _ = Ack(h, false);
                        return "SET_VRING_KICK without a descriptor (polling mode) is not supported";
                    }
                    int fd = noFd ? -1 : fds[0];
                    fdCount = 0;
                    if (fd >= 0 && h.Request == VhostUserRequest.SetVringKick)
                    {
                        Sys.SetNonBlocking(fd);
                    }
                    bool started = false;
                    lock (_lock)
                    {
                        switch (h.Request)
                        {
                            case VhostUserRequest.SetVringKick:
                                CloseFd(ref ring.KickFd);
                                ring.KickFd = fd;
                                string? failure = StartRing((int)(v & VringFdPayload.IndexMask), ring);
                                if (failure is not null)
                                {
                                    _ = Ack(h, false);
                                    return failure;
                                }
                                started = true;
                                break;
                            case VhostUserRequest.SetVringCall:
                                CloseFd(ref ring.CallFd);
                                ring.CallFd = fd;
                                break;
                            default:
                                CloseFd(ref ring.ErrFd);
                                ring.ErrFd = fd;
                                break;
                        }
                    }
                    if (started)
                    {
                        Wake();
                        Kick((int)(v & VringFdPayload.IndexMask));
                    }
                    return Ack(h, true);
                }
            case VhostUserRequest.SetVringEnable:
                {
                    if (!VringState.TryParse(p, out VringState s) || !TryRing(s.Index, out Ring? ring) || s.Num > 1)
                    {
                        return "SET_VRING_ENABLE: short payload, no such ring or a state other than 0/1";
                    }
                    lock (_lock)
                    {
                        ring.Enabled = s.Num == 1;
                        if (ring.Queue is not null)
                        {
                            ring.Queue.Enabled = ring.Enabled;
                        }
                    }
                    if (s.Num == 1)
                    {
                        Kick((int)s.Index); // buffers may have been made available before the ring was enabled
                    }
                    return Ack(h, true);
                }
            case VhostUserRequest.GetQueueNum:
                return ReplyU64(h, (ulong)_rings.Length);
            case VhostUserRequest.GetMaxMemSlots:
                return ReplyU64(h, VhostMemoryTable.MaxRegions);
            case VhostUserRequest.GetConfig:
                {
                    if (!VhostConfigView.TryParse(p, out VhostConfigView c, out VhostUserError error))
                    {
                        return $"GET_CONFIG: {error}";
                    }
                    // The reply echoes {offset, size, flags} and carries the device's configuration bytes.
                    Span<byte> reply = stackalloc byte[VhostConfigView.HeaderLength + (int)c.Size];
                    p[..VhostConfigView.HeaderLength].CopyTo(reply);
                    lock (_lock)
                    {
                        _device.ReadConfig((int)c.Offset, reply[VhostConfigView.HeaderLength..]);
                    }
                    return Reply(h, reply);
                }
            case VhostUserRequest.SetConfig:
                {
                    if (!VhostConfigView.TryParse(p, out VhostConfigView c, out VhostUserError error))
                    {
                        return $"SET_CONFIG: {error}";
                    }
                    lock (_lock)
                    {
                        _device.WriteConfig((int)c.Offset, c.Data);
                    }
                    return Ack(h, true);
                }
            default:
                // vhost-user.rst: a backend that does not understand a request may fail it when a reply is wanted;
                // otherwise the frontend expects it done, and going on would be a lie: end the session.
                LogUnknown(_log, (uint)h.Request, h.Size);
                if (h.NeedReply)
                {
                    return ReplyU64(h, 1); // failed, and the session goes on
                }
                return $"unsupported request {(uint)h.Request} ({h.Request}) without NEED_REPLY";
        }
    }

    private bool SetFeatures(ulong features)
    {
        // Only what we offered; PROTOCOL_FEATURES is ours, not the device's (vhost-user.rst, "Feature negotiation").
        if ((features & ~OfferedFeatures) != 0)
        {
            return false;
        }
        lock (_lock)
        {
            bool anyStarted = false;
            foreach (Ring r in _rings)
            {
                anyStarted |= r.Started;
            }
            if (!anyStarted)
            {
                // A new negotiation before the rings start is a new driver instance: drop the old one's device state.
                _device.Reset();
            }
            _ackedFeatures = features;
            _featuresSet = true;
            _device.DriverFeatures = features & ~ProtocolFeaturesBit;
            foreach (Ring r in _rings)
            {
                if (r.Queue is not null)
                {
                    r.Queue.EventIdx = (features & VirtioFeatures.EventIdx) != 0;
                }
            }
        }
        return true;
    }

    /// <summary>
    /// Maps every region's descriptor (MAP_SHARED, from file offset 0 so that mmap_offset needs no alignment) after
    /// checking sizes against the file, then swaps the new table in under the lock and unmaps the old one. Closes
    /// every descriptor it was given.
    /// </summary>
    private string? SetMemTable(ReadOnlySpan<byte> p, ReadOnlySpan<int> fds)
    {
        try
        {
            if (!VhostMemoryTable.TryParse(p, out VhostMemoryTable table, out VhostUserError error))
            {
                return $"SET_MEM_TABLE: {error}";
            }
            if (table.Count == 0)
            {
                return "SET_MEM_TABLE with no regions";
            }
            if (fds.Length != table.Count)
            {
                return $"SET_MEM_TABLE: {table.Count} regions but {fds.Length} descriptors";
            }
            var regions = new GuestRegion[table.Count];
            var entries = new VhostMemoryRegion[table.Count];
            var maps = new List<(nint, nuint)>(table.Count);
            bool ok = false;
            try
            {
                for (int i = 0; i < table.Count; i++)
                {
                    VhostMemoryRegion r = entries[i] = table[i];
                    ulong length = r.MmapOffset + r.MemorySize;
                    if (r.MemorySize == 0 || length < r.MmapOffset || r.GuestPhysAddr + r.MemorySize < r.GuestPhysAddr
                        || r.UserspaceAddr + r.MemorySize < r.UserspaceAddr || length > 1UL << 46)
                    {
                        return $"SET_MEM_TABLE region {i}: empty or wrapping (gpa 0x{r.GuestPhysAddr:x}, size 0x{r.MemorySize:x}, offset 0x{r.MmapOffset:x})";
                    }
                    // Touching a page beyond the end of the file would be SIGBUS: the file must hold the whole region.
                    long fileSize = VhostUserInterop.Lseek(fds[i], 0, VhostUserInterop.SEEK_END);
                    if (fileSize < 0 || (ulong)fileSize < length)
                    {
                        return $"SET_MEM_TABLE region {i}: descriptor is not a file of at least 0x{length:x} bytes";
                    }
                    nint map = VhostUserInterop.Mmap(0, (nuint)length, VhostUserInterop.PROT_READ | VhostUserInterop.PROT_WRITE,
                        VhostUserInterop.MAP_SHARED, fds[i], 0);
                    if (map == -1)
                    {
                        return $"SET_MEM_TABLE region {i}: mmap failed (errno {Sys.LastErrno})";
                    }
                    maps.Add((map, (nuint)length));
                    regions[i] = new GuestRegion(r.GuestPhysAddr, r.MemorySize, map + (nint)r.MmapOffset);
                }
                lock (_lock)
                {
                    try
                    {
                        if (_memory is null)
                        {
                            _memory = new GuestMemory(regions);
                        }
                        else
                        {
                            _memory.ReplaceRegions(regions);
                        }
                    }
                    catch (ArgumentException e)
                    {
                        return $"SET_MEM_TABLE: {e.Message}";
                    }
                    (nint, nuint)[] old = _mappings;
                    _mappings = [.. maps];
                    _table = entries;
                    ok = true;
                    Unmap(old);
                    // Started rings keep their guest-physical ring addresses; they must still lie in memory.
                    for (int i = 0; i < _rings.Length; i++)
                    {
                        if (_rings[i].Queue is SplitQueue q && !q.RingsValid)
                        {
                            return $"ring {i} lies outside the new memory table";
                        }
                    }
                }
                LogMemTable(_log, table.Count, _memory!.Size >> 20);
                return null;
            }
            finally
            {
                if (!ok)
                {
                    Unmap([.. maps]);
                }
            }
        }
        finally
        {
            Sys.CloseAll(fds); // the mappings keep the files; the descriptors are not needed
        }
    }

    private static void Unmap((nint Address, nuint Length)[] maps)
    {
        foreach ((nint a, nuint l) in maps)
        {
            _ = VhostUserInterop.Munmap(a, l);
        }
    }

    /// <summary>Frontend virtual address to guest physical, through the region holding it.</summary>
    private bool Translate(ulong va, out ulong gpa)
    {
        foreach (VhostMemoryRegion r in _table)
        {
            if (va >= r.UserspaceAddr && va - r.UserspaceAddr < r.MemorySize)
            {
                gpa = r.GuestPhysAddr + (va - r.UserspaceAddr);
                return true;
            }
        }
        gpa = 0;
        return false;
    }

    /// <summary>
    /// The ring starts when its kick descriptor arrives (vhost-user.rst, "Starting and stopping rings"): it needs a
    /// size, addresses inside memory and the base index. Enabled from the start unless PROTOCOL_FEATURES was
    /// negotiated, in which case SET_VRING_ENABLE decides ("Ring states").
    /// </summary>
    private string? StartRing(int index, Ring ring)
    {
        if (_memory is null || !ring.AddressSet || ring.Num == 0)
        {
            return $"ring {index} kicked before its memory, size and addresses were set";
        }
        if (!Translate(ring.Address.Descriptor, out ulong desc) || !Translate(ring.Address.Available, out ulong avail)
            || !Translate(ring.Address.Used, out ulong used))
        {
            return $"ring {index}: an address is outside the memory table";
        }
        var q = new SplitQueue(_memory, _device.QueueMaxSize)
        {
            Size = (ushort)ring.Num,
            DescTable = desc,
            AvailRing = avail,
            UsedRing = used,
            EventIdx = (_ackedFeatures & VirtioFeatures.EventIdx) != 0,
        };
        if (!q.RingsValid)
        {
            return $"ring {index}: descriptor table or rings do not fit in one memory region";
        }
        bool enabled = (_ackedFeatures & ProtocolFeaturesBit) == 0 || ring.Enabled;
        ring.Enabled = enabled;
        q.Enabled = enabled;
        q.NextAvail = ring.Base;
        // The used index continues from what the ring shows (a restarted ring keeps the driver's view consistent).
        q.NextUsed = _memory.TryReadU16(used + 2, out ushort usedIdx) ? usedIdx : ring.Base;
        ring.Queue = q;
        ring.Started = true;
        ring.BrokenReported = false;
        if (!_featuresSet)
        {
            _device.DriverFeatures = _device.DeviceFeatures & VirtioFeatures.Version1;
        }
        return null;
    }

    /// <summary>Processes ring <paramref name="index"/> as a kick would, then signals the call eventfd if the driver wants it.</summary>
    public void Kick(int index)
    {
        lock (_lock)
        {
            if (_stopping || (uint)index >= (uint)_rings.Length)
            {
                return;
            }
            Ring ring = _rings[index];
            if (!ring.Started || ring.Queue is not SplitQueue q || !q.Enabled || _memory is null)
            {
                return;
            }
            bool used = _device.Process(index, q, _memory);
            if (q.Broken != QueueError.None)
            {
                // The driver corrupted this ring: it stays stopped (TryPop refuses it) until the frontend restarts it;
                // tell the frontend through the error eventfd (vhost-user.rst, SET_VRING_ERR).
                if (!ring.BrokenReported)
                {
                    ring.BrokenReported = true;
                    LogBroken(_log, index, q.Broken);
                    if (ring.ErrFd >= 0)
                    {
                        Sys.SignalEventFd(ring.ErrFd);
                    }
                }
                return;
            }
            if (used && q.ShouldInterrupt() && ring.CallFd >= 0)
            {
                Sys.SignalEventFd(ring.CallFd);
            }
        }
    }

    private void KickLoop()
    {
        Span<Sys.PollFd> polls = stackalloc Sys.PollFd[_rings.Length + 1];
        Span<int> ringOf = stackalloc int[_rings.Length + 1];
        while (!_stopping)
        {
            int n = 0;
            polls[n++] = new Sys.PollFd { Fd = _wakeFd, Events = Sys.POLLIN };
            lock (_lock)
            {
                for (int i = 0; i < _rings.Length; i++)
                {
                    if (_rings[i].KickFd >= 0)
                    {
                        ringOf[n] = i;
                        polls[n++] = new Sys.PollFd { Fd = _rings[i].KickFd, Events = Sys.POLLIN };
                    }
                }
            }
            // A bounded wait: a descriptor swapped under us is noticed within the timeout even if a wake was missed.
            int ready = Sys.Poll(polls[..n], 500);
            if (ready <= 0 || _stopping)
            {
                continue;
            }
            if (polls[0].Revents != 0)
            {
                Sys.ReadEventFd(_wakeFd);
            }
            for (int k = 1; k < n; k++)
            {
                if (polls[k].Revents == 0)
                {
                    continue;
                }
                int index = ringOf[k];
                bool current;
                lock (_lock)
                {
                    // Only read a descriptor that is still this ring's (the number may have been closed and reused).
                    current = _rings[index].KickFd == polls[k].Fd;
                    if (current)
                    {
                        Sys.ReadEventFd(polls[k].Fd);
                    }
                }
                if (current)
                {
                    Kick(index);
                }
            }
        }
    }

    private void Wake() => Sys.SignalEventFd(_wakeFd);

    /// <summary>RESET_OWNER / RESET_DEVICE and the end of a session: rings stopped, descriptors closed, device reset.</summary>
    private void ResetDeviceState()
    {
        foreach (Ring r in _rings)
        {
            CloseFd(ref r.KickFd);
            CloseFd(ref r.CallFd);
            CloseFd(ref r.ErrFd);
            r.Queue = null;
            r.Started = r.Enabled = r.AddressSet = false;
            r.Num = 0;
            r.Base = 0;
        }
        _ackedFeatures = 0;
        _featuresSet = false;
        _device.Reset();
    }

    private static void CloseFd(ref int fd)
    {
        if (fd >= 0)
        {
            _ = Sys.Close(fd);
            fd = -1;
        }
    }

    private bool TryRing(uint index, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Ring? ring)
    {
        ring = index < (uint)_rings.Length ? _rings[index] : null;
        return ring is not null;
    }

    private static bool TryU64(ReadOnlySpan<byte> p, out ulong value)
    {
        value = p.Length >= 8 ? BinaryPrimitives.ReadUInt64LittleEndian(p) : 0;
        return p.Length >= 8;
    }

    private string? ReplyU64(VhostUserHeader h, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        return Reply(h, b);
    }

    /// <summary>REPLY_ACK (vhost-user.rst): when the frontend set NEED_REPLY, a u64 of 0 for success, non-zero for failure.</summary>
    private string? Ack(VhostUserHeader h, bool success)
    {
        if (!h.NeedReply)
        {
            return success ? null : $"{h.Request} failed";
        }
        string? sent = ReplyU64(h, success ? 0UL : 1UL);
        return sent ?? (success ? null : $"{h.Request} failed");
    }

    private string? Reply(VhostUserHeader h, ReadOnlySpan<byte> payload)
    {
        Span<byte> message = _reply.AsSpan(0, VhostUserHeader.Length + payload.Length);
        new VhostUserHeader(h.Request, VhostUserFlags.Version | VhostUserFlags.Reply, (uint)payload.Length).Write(message);
        payload.CopyTo(message[VhostUserHeader.Length..]);
        return VhostUserInterop.SendWithFds(_fd, message, []) ? null : $"could not send the reply to {h.Request}";
    }

    /// <summary>Ends the session from another thread (the backend is being disposed).</summary>
    public void Abort()
    {
        _stopping = true;
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        Wake();
    }

    public void Dispose()
    {
        _stopping = true;
        Wake();
        _kickThread?.Join(TimeSpan.FromSeconds(5));
        lock (_lock)
        {
            ResetDeviceState();
            Unmap(_mappings);
            _mappings = [];
            _table = [];
            _memory = null;
        }
        _socket.Dispose();
        if (_wakeFd >= 0)
        {
            _ = Sys.Close(_wakeFd);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "vhost-user: unsupported request {Request} (size {Size})")]
    private static partial void LogUnknown(ILogger logger, uint request, uint size);

    [LoggerMessage(Level = LogLevel.Information, Message = "vhost-user: memory table of {Count} regions ({Mib} MiB address space)")]
    private static partial void LogMemTable(ILogger logger, int count, ulong mib);

    [LoggerMessage(Level = LogLevel.Warning, Message = "vhost-user: the driver broke ring {Index} ({Error}); it stays stopped")]
    private static partial void LogBroken(ILogger logger, int index, QueueError error);
}
