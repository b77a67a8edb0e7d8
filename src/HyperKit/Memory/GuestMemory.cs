using System.Buffers.Binary;
using Kit.HyperKit.Kvm;

namespace Kit.HyperKit.Memory;

/// <summary>
/// Guest RAM: one anonymous mmap covering guest physical [0, Size). Every address a device gets from the guest is
/// hostile, so all access goes through <see cref="TryGetSpan"/>-style calls that check the whole range (with overflow
/// care) and fail instead of touching host memory outside the mapping. The same class backs unit tests (an mmap needs
/// no /dev/kvm).
/// </summary>
public sealed unsafe class GuestMemory : IDisposable
{
    private byte* _base;

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
            throw new KvmException($"mmap of {size >> 20} MiB guest memory", LibC.LastErrno);
        }
        _base = (byte*)map;
        Size = size;
    }

    public ulong Size { get; }

    /// <summary>The host address of guest physical 0 (for KVM_SET_USER_MEMORY_REGION only).</summary>
    public nint HostAddress => (nint)_base;

    /// <summary>True when [gpa, gpa+length) lies inside guest RAM.</summary>
    public bool Contains(ulong gpa, ulong length) => gpa <= Size && length <= Size - gpa;

    /// <summary>A view of guest RAM, or false when any byte of the range is outside it.</summary>
    public bool TryGetSpan(ulong gpa, int length, out Span<byte> span)
    {
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
