using Kit.HyperKit.Hypervisor;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// The coalesced MMIO/PIO ring KVM shares with the VMM (struct kvm_coalesced_mmio_ring, linux/kvm.h): one page per VM,
/// mapped into every vCPU's kvm_run mapping at page KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO). KVM appends writes
/// at <c>last</c>; the VMM consumes from <c>first</c>. When the ring is full KVM falls back to an ordinary exit for
/// that write, so nothing is lost. Entries must be replayed before the VMM handles any exit that could observe them.
/// Not thread-safe: callers serialise <see cref="TryPeek"/>/<see cref="Advance"/> with one lock per VM.
/// </summary>
public sealed unsafe class KvmCoalescedRing : IQueuedWrites
{
    // struct kvm_coalesced_mmio { __u64 phys_addr; __u32 len; __u32 pio; __u8 data[8]; } is 24 bytes; the ring
    // header (first, last) is 8 bytes and the entries fill the rest of the page.
    private const int HeaderSize = 8, EntrySize = 24, PageSize = 4096;
    private const uint Capacity = (PageSize - HeaderSize) / EntrySize;

    private readonly byte* _ring;

    private KvmCoalescedRing(byte* ring) => _ring = ring;

    /// <summary>The ring as mapped by <paramref name="vcpu"/>, or null when the mapping does not reach it.</summary>
    internal static KvmCoalescedRing? For(KvmVcpu vcpu, int pageOffset)
    {
        byte* page = vcpu.MappedPage(pageOffset);
        return page is null ? null : new KvmCoalescedRing(page);
    }

    /// <summary>A ring over any page-sized buffer the caller keeps alive (tests play KVM's part with it).</summary>
    internal static KvmCoalescedRing Over(nint page) => new((byte*)page);

    /// <summary>True when KVM has queued nothing (a cheap check for every exit: two loads, no lock).</summary>
    public bool IsEmpty
    {
        get
        {
            // SAFETY: the first 8 bytes of the mapped ring page are the first/last indices.
            return Volatile.Read(ref *(uint*)_ring) == Volatile.Read(ref *(uint*)(_ring + 4));
        }
    }

    /// <summary>
    /// The oldest queued write, left in the ring until <see cref="Advance"/> (so a vCPU that finds the ring non-empty
    /// waits on the caller's lock until the write has been applied). Returns false when empty or on a bad index.
    /// </summary>
    public bool TryPeek(out ulong address, out bool pio, Span<byte> data, out int length)
    {
        address = 0;
        pio = false;
        length = 0;
        // SAFETY: indices are read from the mapped header and bounds-checked against the capacity before use.
        uint first = Volatile.Read(ref *(uint*)_ring);
        uint last = Volatile.Read(ref *(uint*)(_ring + 4)); // KVM writes the entry, then smp_wmb, then last
        if (first == last || first >= Capacity)
        {
            return false;
        }
        byte* entry = _ring + HeaderSize + first * EntrySize;
        address = *(ulong*)entry;
        length = (int)Math.Min(*(uint*)(entry + 8), 8u);
        pio = *(uint*)(entry + 12) != 0;
        length = Math.Min(length, data.Length);
        new ReadOnlySpan<byte>(entry + 16, length).CopyTo(data);
        return true;
    }

    /// <summary>Releases the entry last returned by <see cref="TryPeek"/> back to KVM.</summary>
    public void Advance()
    {
        // SAFETY: header index inside the mapped page; KVM reads first (under its own lock) to find free slots.
        uint first = *(uint*)_ring;
        Volatile.Write(ref *(uint*)_ring, (first + 1) % Capacity);
    }
}
