namespace Kit.VpnKit.Capture;

/// <summary>
/// Captures started and stopped while the gateway runs (the inspector's <c>/api/pcap</c>): each keeps the frames its
/// <see cref="FlowFilter"/> takes, in memory, as a libpcap file that readers stream from its start. Bounded twice: at most
/// <see cref="MaxCaptures"/> at once (a capture counts until it is removed), at most <see cref="MaxBytes"/> each (a full
/// capture stops taking frames and its readers reach the end).
/// </summary>
public sealed class LiveCaptures(int maxCaptures = 4, long maxBytes = 16 << 20)
{
    private readonly object _gate = new();
    private LiveCapture[] _all = [];
    private long _nextId;

    public int MaxCaptures => maxCaptures;

    public long MaxBytes => maxBytes;

    public IReadOnlyList<LiveCapture> All => _all;

    /// <summary>A new running capture, or null when <see cref="MaxCaptures"/> are held already.</summary>
    public LiveCapture? Start(FlowFilter filter)
    {
        lock (_gate)
        {
            if (_all.Length >= maxCaptures)
            {
                return null;
            }
            var c = new LiveCapture(++_nextId, filter, maxBytes);
            _all = [.. _all, c];
            return c;
        }
    }

    public LiveCapture? Find(long id)
    {
        foreach (LiveCapture c in _all)
        {
            if (c.Id == id)
            {
                return c;
            }
        }
        return null;
    }

    /// <summary>Stops the capture (its readers reach the end of the file) and forgets it; false when there is none.</summary>
    public bool Remove(long id)
    {
        lock (_gate)
        {
            if (Find(id) is not LiveCapture c)
            {
                return false;
            }
            c.Stop();
            _all = Array.FindAll(_all, x => x != c);
            return true;
        }
    }

    /// <summary>The switch's tap: every frame, each way. Nothing captured costs one array read.</summary>
    public void Offer(ReadOnlySpan<byte> frame)
    {
        foreach (LiveCapture c in _all)
        {
            c.Offer(frame);
        }
    }
}

/// <summary>One live capture: a libpcap file in memory, appended in 64 KiB chunks that never move once written.</summary>
public sealed class LiveCapture
{
    private const int ChunkSize = 64 * 1024;
    private const int SnapLength = 65535;
    private static readonly TimeSpan PollInterval = TimeSpan.FromMilliseconds(50);
    private readonly object _gate = new();
    private readonly List<byte[]> _chunks = [];
    private readonly long _maxBytes;
    private long _length;
    private bool _stopped;

    internal LiveCapture(long id, FlowFilter filter, long maxBytes)
    {
        Id = id;
        Filter = filter;
        _maxBytes = maxBytes;
        Span<byte> header = stackalloc byte[PcapWriter.FileHeaderLength];
        PcapWriter.WriteFileHeader(header, SnapLength);
        Append(header);
    }

    public long Id { get; }

    public FlowFilter Filter { get; }

    public long Frames { get; private set; }

    public long Bytes => Volatile.Read(ref _length);

    /// <summary>The byte cap was reached: the capture took no frame since.</summary>
    public bool Full { get; private set; }

    internal void Offer(ReadOnlySpan<byte> frame)
    {
        if (Volatile.Read(ref _stopped) || !Filter.Matches(frame))
        {
            return;
        }
        int captured = Math.Min(frame.Length, SnapLength);
        Span<byte> record = stackalloc byte[PcapWriter.RecordHeaderLength];
        PcapWriter.WriteRecordHeader(record, captured, frame.Length);
        lock (_gate)
        {
            if (_stopped)
            {
                return;
            }
            if (_length + record.Length + captured > _maxBytes)
            {
                Full = true;
                _stopped = true;
                return;
            }
            Append(record);
            Append(frame.Slice(0, captured));
            Frames++;
        }
    }

    internal void Stop()
    {
        lock (_gate)
        {
            _stopped = true;
        }
    }

    private void Append(ReadOnlySpan<byte> data)
    {
        while (!data.IsEmpty)
        {
            int offset = (int)(_length % ChunkSize);
            if (offset == 0)
            {
                _chunks.Add(new byte[ChunkSize]);
            }
            int n = Math.Min(data.Length, ChunkSize - offset);
            data.Slice(0, n).CopyTo(_chunks[^1].AsSpan(offset));
            data = data.Slice(n);
            Volatile.Write(ref _length, _length + n);
        }
    }

    /// <summary>
    /// Writes the file from its start to <paramref name="destination"/> and follows it until the capture stops (removed
    /// or full). Bytes below the length read under the lock are never written again, so they are copied outside it.
    /// </summary>
    public async Task CopyToAsync(Stream destination, CancellationToken cancellationToken)
    {
        long sent = 0;
        while (true)
        {
            long length;
            bool stopped;
            lock (_gate)
            {
                length = _length;
                stopped = _stopped;
            }
            while (sent < length)
            {
                byte[] chunk;
                lock (_gate)
                {
                    chunk = _chunks[(int)(sent / ChunkSize)];
                }
                int offset = (int)(sent % ChunkSize);
                int n = (int)Math.Min(ChunkSize - offset, length - sent);
                await destination.WriteAsync(chunk.AsMemory(offset, n), cancellationToken).ConfigureAwait(false);
                sent += n;
            }
            await destination.FlushAsync(cancellationToken).ConfigureAwait(false);
            if (stopped)
            {
                return;
            }
            await Task.Delay(PollInterval, cancellationToken).ConfigureAwait(false);
        }
    }
}
