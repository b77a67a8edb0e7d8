namespace Kit.VpnKit.Inspect;

/// <summary>
/// The newest <c>capacity</c> records, oldest evicted first: the inspector's memory does not grow with the traffic.
/// Not thread-safe: <see cref="Inspector"/> holds its lock around every call.
/// </summary>
internal sealed class RecordRing<T>(int capacity) where T : class
{
    private readonly T?[] _items = new T?[Math.Max(1, capacity)];
    private int _next;
    private int _count;

    public int Count => _count;

    public int Capacity => _items.Length;

    /// <summary>Records ever added (evicted ones included).</summary>
    public long Added { get; private set; }

    public void Add(T item)
    {
        _items[_next] = item;
        _next = (_next + 1) % _items.Length;
        _count = Math.Min(_count + 1, _items.Length);
        Added++;
    }

    /// <summary>Oldest first.</summary>
    public void CopyTo(List<T> into)
    {
        int start = (_next - _count + _items.Length) % _items.Length;
        for (int i = 0; i < _count; i++)
        {
            into.Add(_items[(start + i) % _items.Length]!);
        }
    }
}
