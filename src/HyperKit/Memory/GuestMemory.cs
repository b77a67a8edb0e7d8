using System.Buffers.Binary;
using Kit.HyperKit.Kvm;
using Kit.Linux;

namespace Kit.HyperKit.Memory;

/// <summary>One piece of guest RAM mapped elsewhere: guest physical [Gpa, Gpa+Size) lives at host address Host.</summary>
public readonly record struct GuestRegion(ulong Gpa, ulong Size, nint Host);

/// <summary>
/// Guest RAM. Two shapes: one anonymous mmap covering guest physical [0, Size) (Kit's own VMM, unit tests), or a list
/// of regions mapped by someone else (a vhost-user frontend's memory table: QEMU's pc/q35 RAM arrives as 0..0xa0000,
/// 0xc0000..below 4G and above 4G, all pieces of one memfd). Every address a device gets from the guest is hostile, so
/// all access goes through <see cref="TryGetSpan"/>-style calls that check the whole range (with overflow care) and
/// fail instead of touching host memory outside the mapping; a range that crosses from one region into another is
/// refused even when the regions touch, because their host mappings need not be adjacent.
/// </summary>
public sealed unsafe class GuestMemory : IDisposable
{
    private byte* _base;
    // Null for the single-mapping shape (the fast path KVM uses); else the regions, sorted by Gpa and disjoint.
    private GuestRegion[]? _regions;

    public GuestMemory(ulong size)
    {
        if (size == 0 || size % 4096 != 0 || size > 1UL << 40)
        {
            throw new ArgumentOutOfRangeException(nameof(size), "guest memory must be a non-zero multiple of 4 KiB");
        }
        nint map = LibC.Mmap(0, (nuint)size, LibC.PROT_READ | LibC.PROT_WRITE,
            LibC.MAP_PRIVATE | LibC.MAP_ANONYMOUS | LibC.MAP_NORESERVE, -1, 0);
        if (map == -1)
        {
            throw new KvmException($"mmap of {size >> 20} MiB guest memory", Sys.LastErrno);
        }
        _base = (byte*)map;
        Size = size;
    }

    /// <summary>
    /// Guest RAM made of regions mapped by the caller, who keeps them mapped until <see cref="Dispose"/> of this
    /// object (which unmaps nothing in this shape) or <see cref="ReplaceRegions"/>. Regions must be non-empty,
    /// must not overlap and must not wrap the address space.
    /// </summary>
    public GuestMemory(ReadOnlySpan<GuestRegion> regions)
    {
        GuestRegion[] sorted = Validate(regions);
        _regions = sorted;
        Size = SizeOf(sorted);
    }

    /// <summary>Checks a region list (sorted copy); throws ArgumentException naming the problem.</summary>
    private static GuestRegion[] Validate(ReadOnlySpan<GuestRegion> regions)
    {
        if (regions.IsEmpty)
        {
            throw new ArgumentException("guest memory needs at least one region", nameof(regions));
        }
        GuestRegion[] sorted = regions.ToArray();
        Array.Sort(sorted, static (a, b) => a.Gpa.CompareTo(b.Gpa));
        for (int i = 0; i < sorted.Length; i++)
        {
            GuestRegion r = sorted[i];
            if (r.Size == 0 || r.Host == 0 || r.Gpa + r.Size < r.Gpa || (ulong)r.Host + r.Size < (ulong)r.Host)
            {
                throw new ArgumentException($"region {i} (gpa 0x{r.Gpa:x}, size 0x{r.Size:x}) is empty or wraps", nameof(regions));
            }
            if (i > 0 && sorted[i - 1].Gpa + sorted[i - 1].Size > r.Gpa)
            {
                throw new ArgumentException($"regions at gpa 0x{sorted[i - 1].Gpa:x} and 0x{r.Gpa:x} overlap", nameof(regions));
            }
        }
        return sorted;
    }

    private static ulong SizeOf(GuestRegion[] regions) => regions[^1].Gpa + regions[^1].Size;

    /// <summary>
    /// Swaps the region list (a new vhost-user memory table). The caller must ensure no span from the old regions is
    /// in use (the vhost-user backend holds the lock every queue access runs under) before it unmaps them.
    /// </summary>
    internal void ReplaceRegions(ReadOnlySpan<GuestRegion> regions)
    {
        if (_regions is null)
        {
            throw new InvalidOperationException("a single-mapping guest memory cannot take regions");
        }
        GuestRegion[] sorted = Validate(regions);
        _regions = sorted;
        Size = SizeOf(sorted);
    }

    /// <summary>The regions (one covering [0, Size) for the single-mapping shape).</summary>
    public IReadOnlyList<GuestRegion> Regions => _regions ?? [new GuestRegion(0, Size, (nint)_base)];

    /// <summary>For the region shape: the end of the highest region; for a single mapping its size.</summary>
    public ulong Size { get; private set; }

    /// <summary>The host address of guest physical 0 (for KVM_SET_USER_MEMORY_REGION only; single-mapping shape).</summary>
    public nint HostAddress => (nint)_base;

    /// <summary>True when [gpa, gpa+length) lies inside guest RAM (inside one region for the region shape).</summary>
    public bool Contains(ulong gpa, ulong length)
    {
        if (_regions is null)
        {
            return gpa <= Size && length <= Size - gpa;
        }
        return Find(_regions, gpa, length) >= 0;
    }

    private static int Find(GuestRegion[] regions, ulong gpa, ulong length)
    {
        // A handful of regions (QEMU sends at most 8 without CONFIGURE_MEM_SLOTS): a linear scan beats a search.
        for (int i = 0; i < regions.Length; i++)
        {
            GuestRegion r = regions[i];
            if (gpa >= r.Gpa && gpa - r.Gpa <= r.Size && length <= r.Size - (gpa - r.Gpa))
            {
                // An empty range exactly at a region's end is in it; gpa - r.Gpa <= r.Size keeps the subtraction safe.
                return i;
            }
        }
        return -1;
    }

    /// <summary>A view of guest RAM, or false when any byte of the range is outside it.</summary>
    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
        if (_regions is GuestRegion[] regions)
        {
            int i = length < 0 ? -1 : Find(regions, gpa, (ulong)length);
            if (i < 0)
            {
                span = default;
                return false;
            }
            // SAFETY: [gpa, gpa+length) lies inside region i, whose host mapping [Host, Host+Size) the owner keeps
            // mapped while this list is current (ReplaceRegions happens under the owner's lock, after queue users stop).
            span = new Span<byte>((byte*)regions[i].Host + (gpa - regions[i].Gpa), length);
            return true;
        }
        if (length < 0 || !Contains(gpa, (ulong)length) || _base == null)
        {
            span = default;
            return false;
        }
        // SAFETY: the range was checked to lie within the live mapping [_base, _base+Size). The span must not outlive
        // this object; device code holds spans only for the duration of one request.
        span = new Span<byte>(_base + gpa, length);
        return true;
    }

    /// <summary>Like <see cref="TryGetSpan"/> for trusted callers (boot loader): throws on a bad range.</summary>
    public Span<byte> GetSpan(ulong gpa, int length) =>
        TryGetSpan(gpa, length, out Span<byte> span) ? span
            : throw new ArgumentOutOfRangeException(nameof(gpa), $"0x{gpa:x}+{length} is outside guest memory");

    public bool TryRead(ulong gpa, Span<byte> destination)
    {
        if (!TryGetSpan(gpa, destination.Length, out Span<byte> source))
        {
            return false;
        }
        source.CopyTo(destination);
        return true;
    }

    public bool TryWrite(ulong gpa, ReadOnlySpan<byte> source)
    {
        if (!TryGetSpan(gpa, source.Length, out Span<byte> destination))
        {
            return false;
        }
        source.CopyTo(destination);
        return true;
    }

    public bool TryReadU16(ulong gpa, out ushort value)
    {
        bool ok = TryGetSpan(gpa, 2, out Span<byte> s);
        value = ok ? BinaryPrimitives.ReadUInt16LittleEndian(s) : (ushort)0;
        return ok;
    }

    public bool TryReadU32(ulong gpa, out uint value)
    {
        bool ok = TryGetSpan(gpa, 4, out Span<byte> s);
        value = ok ? BinaryPrimitives.ReadUInt32LittleEndian(s) : 0;
        return ok;
    }

    public bool TryReadU64(ulong gpa, out ulong value)
    {
        bool ok = TryGetSpan(gpa, 8, out Span<byte> s);
        value = ok ? BinaryPrimitives.ReadUInt64LittleEndian(s) : 0;
        return ok;
    }

    public bool TryWriteU16(ulong gpa, ushort value)
    {
        bool ok = TryGetSpan(gpa, 2, out Span<byte> s);
        if (ok)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(s, value);
        }
        return ok;
    }

    public bool TryWriteU32(ulong gpa, uint value)
    {
        bool ok = TryGetSpan(gpa, 4, out Span<byte> s);
        if (ok)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(s, value);
        }
        return ok;
    }

    public bool TryWriteU64(ulong gpa, ulong value)
    {
        bool ok = TryGetSpan(gpa, 8, out Span<byte> s);
        if (ok)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(s, value);
        }
        return ok;
    }

    public void Dispose()
    {
        if (_base != null)
        {
            // SAFETY: unmapping the region mapped in the constructor, once; the VM using it is disposed first.
            _ = LibC.Munmap((nint)_base, (nuint)Size);
            _base = null;
        }
    }
}
