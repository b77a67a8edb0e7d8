using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Links;

/// <summary>
/// A learning Ethernet switch (IEEE 802.1D in miniature): several guests share one gateway. Frames for the gateway
/// go to the engine; frames between guests are forwarded by learned source MAC; unknown and broadcast frames flood.
/// The MAC table is bounded.
/// </summary>
internal sealed class Switch : IFrameSink
{
    private const int MaxMacs = 1024;
    private readonly object _gate = new();
    private readonly List<ILink> _links = [];
    private readonly Dictionary<MacAddress, ILink> _macs = [];
    private readonly Dictionary<ILink, int> _ids = [];
    private int _nextId;
    private ILink[] _snapshot = [];

    public Action<ReadOnlySpan<byte>>? Tap { get; set; }

    public void Add(ILink link)
    {
        lock (_gate)
        {
            _links.Add(link);
            _ids[link] = ++_nextId;
            _snapshot = [.. _links];
        }
    }

    /// <summary>The link's number, from 1, never reused: what the engine charges DHCP leases to (0 for a link not added).</summary>
    public int IdOf(ILink link)
    {
        lock (_gate)
        {
            return _ids.GetValueOrDefault(link);
        }
    }

    public void Remove(ILink link)
    {
        lock (_gate)
        {
            _links.Remove(link);
            _ids.Remove(link);
            _snapshot = [.. _links];
            var stale = new List<MacAddress>();
            foreach (KeyValuePair<MacAddress, ILink> kv in _macs)
            {
                if (kv.Value == link)
                {
                    stale.Add(kv.Key);
                }
            }
            foreach (MacAddress m in stale)
            {
                _macs.Remove(m);
            }
        }
    }

    /// <summary>Learns the sender and says whether the gateway should see the frame; forwards to other guests.</summary>
    public bool FromLink(ILink from, ReadOnlySpan<byte> frame, MacAddress gatewayMac)
    {
        Tap?.Invoke(frame);
        if (frame.Length < EthernetFrame.HeaderLength)
        {
            return false;
        }
        MacAddress dst = MacAddress.Read(frame);
        MacAddress src = MacAddress.Read(frame.Slice(6));
        ILink[] links = _snapshot;
        if (links.Length > 1 && !src.IsMulticast)
        {
            lock (_gate)
            {
                if (_macs.Count < MaxMacs || _macs.ContainsKey(src))
                {
                    _macs[src] = from;
                }
            }
        }
        if (dst == gatewayMac)
        {
            return true;
        }
        if (links.Length > 1)
        {
            ILink? to = null;
            if (!dst.IsMulticast)
            {
                lock (_gate)
                {
                    _macs.TryGetValue(dst, out to);
                }
            }
            if (to is not null)
            {
                if (to != from)
                {
                    to.Send(frame);
                }
                return false;
            }
            foreach (ILink l in links)
            {
                if (l != from)
                {
                    l.Send(frame);
                }
            }
        }
        return dst.IsMulticast;
    }

    /// <summary>Offloaded TCP frames from the engine (only when every link supports offload).</summary>
    public void SendOffloaded(ReadOnlySpan<byte> frame, int segmentSize)
    {
        Tap?.Invoke(frame);
        foreach (ILink l in _snapshot)
        {
            l.SendOffloaded(frame, segmentSize);
        }
    }

    /// <summary>Frames from the engine.</summary>
    public void Send(ReadOnlySpan<byte> frame)
    {
        Tap?.Invoke(frame);
        ILink[] links = _snapshot;
        if (links.Length == 1)
        {
            links[0].Send(frame);
            return;
        }
        MacAddress dst = MacAddress.Read(frame);
        ILink? to = null;
        if (!dst.IsMulticast)
        {
            lock (_gate)
            {
                _macs.TryGetValue(dst, out to);
            }
        }
        if (to is not null)
        {
            to.Send(frame);
            return;
        }
        foreach (ILink l in links)
        {
            l.Send(frame);
        }
    }
}
