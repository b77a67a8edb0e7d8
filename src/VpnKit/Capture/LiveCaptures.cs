using Kit.VpnKit.Policy;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Capture;

/// <summary>
/// Captures started and stopped while the gateway runs (the inspector's <c>/api/pcap</c>): each keeps the frames of one
/// flow (<see cref="FlowFilter"/>) or of the flows one policy rule decides (<see cref="RuleFlows"/>), in memory, as a
/// libpcap file that readers stream from its start. Bounded twice: at most <see cref="MaxCaptures"/> at once (a capture
/// counts until it is removed), at most <see cref="MaxBytes"/> each (a full capture stops taking frames and its readers
/// reach the end). A rule capture ends when its rule is deleted.
/// </summary>
public sealed class LiveCaptures(int maxCaptures = 4, long maxBytes = 16 << 20)
{
    private readonly object _gate = new();
    private readonly RuleFlows _ruleFlows = new();
    private LiveCapture[] _all = [];
    /// <summary>A rule capture runs: the tap reads every frame's flow (with none, it never does).</summary>
    private volatile bool _following;
    private PolicyTable? _policy;
    private long _nextId;

    public int MaxCaptures => maxCaptures;

    public long MaxBytes => maxBytes;

    public IReadOnlyList<LiveCapture> All => _all;

    internal RuleFlows RuleFlows => _ruleFlows;

    /// <summary>The rules that captures by rule name: a rule removed from it ends its captures.</summary>
    public void Watch(PolicyTable policy)
    {
        _policy = policy;
        policy.Changed += () => RulesChanged(policy.Rules);
    }

    /// <summary>A new running capture, or null when <see cref="MaxCaptures"/> are held already.</summary>
    public LiveCapture? Start(FlowFilter filter)
    {
        lock (_gate)
        {
            return Add(filter, null);
        }
    }

    /// <summary>
    /// A new running capture of the flows <paramref name="rule"/> decides from now on (null when
    /// <see cref="MaxCaptures"/> are held already), or false when the watched rules have no such rule.
    /// </summary>
    public bool TryStartRule(string rule, out LiveCapture? capture)
    {
        capture = null;
        lock (_gate)
        {
            // Checked under the gate that RulesChanged takes after the table changed: a rule removed meanwhile either
            // is not found here or ends the capture made here.
            if (_policy is null || !Exists(_policy.Rules, rule))
            {
                return false;
            }
            capture = Add(null, rule);
            return true;
        }
    }

    private LiveCapture? Add(FlowFilter? filter, string? rule)
    {
        if (_all.Length >= maxCaptures)
        {
            return null;
        }
        var c = new LiveCapture(++_nextId, filter, rule, maxBytes);
        _all = [.. _all, c];
        _following = HasRuleCapture();
        return c;
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
            c.Stop(null);
            _all = Array.FindAll(_all, x => x != c);
            Forget(c);
            return true;
        }
    }

    /// <summary>The rule list changed: captures of a rule no longer in it end (their readers reach the end of the file).</summary>
    internal void RulesChanged(IReadOnlyList<PolicyRule> rules)
    {
        lock (_gate)
        {
            foreach (LiveCapture c in _all)
            {
                if (c.Rule is string name && !c.Ended && !Exists(rules, name))
                {
                    c.Stop("rule deleted");
                    Forget(c);
                }
            }
        }
    }

    private void Forget(LiveCapture c)
    {
        _following = HasRuleCapture();
        if (!_following)
        {
            _ruleFlows.Clear();
        }
        else if (c.Rule is not null)
        {
            _ruleFlows.Forget(c);
        }
    }

    private bool HasRuleCapture()
    {
        foreach (LiveCapture c in _all)
        {
            if (c.Rule is not null && !c.Ended)
            {
                return true;
            }
        }
        return false;
    }

    private static bool Exists(IReadOnlyList<PolicyRule> rules, string name)
    {
        foreach (PolicyRule r in rules)
        {
            if (r.Name == name)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>The switch's tap: every frame, each way. Nothing captured costs one array read.</summary>
    public void Offer(ReadOnlySpan<byte> frame)
    {
        foreach (LiveCapture c in _all)
        {
            c.Offer(frame);
        }
        if (_following)
        {
            _ruleFlows.Offer(frame);
        }
    }

    /// <summary>
    /// The NAT decided a new flow (a SYN, a datagram, an echo request) to <paramref name="remote"/> by
    /// <paramref name="rule"/> (or none): the frame that asked, on this thread's tap, goes to that rule's capture.
    /// </summary>
    internal void Decided(RuleProto proto, IpAddr remote, ushort remotePort, PolicyRule? rule, bool needStream)
    {
        if (_following)
        {
            _ruleFlows.Decided(proto, remote, remotePort, rule, needStream, _all);
        }
    }

    /// <summary>The proxy decided a TCP flow on its first bytes (sni, host rules).</summary>
    internal void DecidedOnStream(IpAddr guest, ushort guestPort, IpAddr remote, ushort remotePort, PolicyRule? rule)
    {
        if (_following)
        {
            _ruleFlows.DecidedOnStream(guest, guestPort, remote, remotePort, rule, _all);
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
    private long _flows;

    internal LiveCapture(long id, FlowFilter? filter, string? rule, long maxBytes)
    {
        Id = id;
        Filter = filter;
        Rule = rule;
        _maxBytes = maxBytes;
        Span<byte> header = stackalloc byte[PcapWriter.FileHeaderLength];
        PcapWriter.WriteFileHeader(header, SnapLength);
        Append(header);
    }

    public long Id { get; }

    /// <summary>The 5-tuple taken, for a capture of one flow; null for a capture of a rule.</summary>
    public FlowFilter? Filter { get; }

    /// <summary>The policy rule whose flows are taken, or null.</summary>
    public string? Rule { get; }

    /// <summary>Flows a rule capture has followed since it started.</summary>
    public long Flows => Interlocked.Read(ref _flows);

    /// <summary>Why the capture takes no more frames (<c>full</c>, <c>rule deleted</c>), or null while it runs.</summary>
    public string? EndReason { get; private set; }

    public bool Ended => Volatile.Read(ref _stopped);

    public long Frames { get; private set; }

    public long Bytes => Volatile.Read(ref _length);

    /// <summary>The byte cap was reached: the capture took no frame since.</summary>
    public bool Full { get; private set; }

    internal void Offer(ReadOnlySpan<byte> frame)
    {
        if (Filter is { } filter && !Volatile.Read(ref _stopped) && filter.Matches(frame))
        {
            Take(frame, PcapWriter.NowMicros());
        }
    }

    internal void CountFlow() => Interlocked.Increment(ref _flows);

    /// <summary>Appends one record stamped <paramref name="micros"/>, unless the capture has stopped or this would pass the byte cap.</summary>
    internal void Take(ReadOnlySpan<byte> frame, long micros)
    {
        int captured = Math.Min(frame.Length, SnapLength);
        Span<byte> record = stackalloc byte[PcapWriter.RecordHeaderLength];
        PcapWriter.WriteRecordHeader(record, captured, frame.Length, micros);
        lock (_gate)
        {
            if (_stopped)
            {
                return;
            }
            if (_length + record.Length + captured > _maxBytes)
            {
                Full = true;
                EndReason = "full";
                _stopped = true;
                return;
            }
            Append(record);
            Append(frame.Slice(0, captured));
            Frames++;
        }
    }

    /// <summary>Takes no more frames; readers reach the end of the file. <paramref name="reason"/>: why, when it stays listed.</summary>
    internal void Stop(string? reason)
    {
        lock (_gate)
        {
            EndReason ??= reason;
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
