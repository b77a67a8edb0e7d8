using System.Buffers.Binary;
using Kit.NineP.Protocol;

namespace Kit.HyperKit.HostFs;

/// <summary>What statx(2) said about one host file (the STATX_BASIC_STATS fields).</summary>
internal readonly record struct HostAttr(
    uint Mode, uint Uid, uint Gid, ulong NLink, ulong Ino, ulong Size, ulong Blocks, uint BlkSize,
    long AtimeSec, uint AtimeNsec, long MtimeSec, uint MtimeNsec, long CtimeSec, uint CtimeNsec,
    uint RdevMajor, uint RdevMinor, uint DevMajor, uint DevMinor)
{
    public const int StatxSize = 256;

    public uint Type => Mode & HostCalls.S_IFMT;
    public bool IsDirectory => Type == HostCalls.S_IFDIR;
    public bool IsSymlink => Type == HostCalls.S_IFLNK;
    public bool IsRegular => Type == HostCalls.S_IFREG;

    /// <summary>Parses struct statx (include/uapi/linux/stat.h; fixed 256-byte layout).</summary>
    public static HostAttr Parse(ReadOnlySpan<byte> s) => new(
        Mode: BinaryPrimitives.ReadUInt16LittleEndian(s[28..]),
        Uid: BinaryPrimitives.ReadUInt32LittleEndian(s[20..]),
        Gid: BinaryPrimitives.ReadUInt32LittleEndian(s[24..]),
        NLink: BinaryPrimitives.ReadUInt32LittleEndian(s[16..]),
        Ino: BinaryPrimitives.ReadUInt64LittleEndian(s[32..]),
        Size: BinaryPrimitives.ReadUInt64LittleEndian(s[40..]),
        Blocks: BinaryPrimitives.ReadUInt64LittleEndian(s[48..]),
        BlkSize: BinaryPrimitives.ReadUInt32LittleEndian(s[4..]),
        AtimeSec: BinaryPrimitives.ReadInt64LittleEndian(s[64..]),
        AtimeNsec: BinaryPrimitives.ReadUInt32LittleEndian(s[72..]),
        MtimeSec: BinaryPrimitives.ReadInt64LittleEndian(s[112..]),
        MtimeNsec: BinaryPrimitives.ReadUInt32LittleEndian(s[120..]),
        CtimeSec: BinaryPrimitives.ReadInt64LittleEndian(s[96..]),
        CtimeNsec: BinaryPrimitives.ReadUInt32LittleEndian(s[104..]),
        RdevMajor: BinaryPrimitives.ReadUInt32LittleEndian(s[128..]),
        RdevMinor: BinaryPrimitives.ReadUInt32LittleEndian(s[132..]),
        DevMajor: BinaryPrimitives.ReadUInt32LittleEndian(s[136..]),
        DevMinor: BinaryPrimitives.ReadUInt32LittleEndian(s[140..]));

    /// <summary>The qid type for a Linux file type (9P2000.L: QTDIR, QTSYMLINK, else QTFILE).</summary>
    public static byte QidType(uint type) => type switch
    {
        HostCalls.S_IFDIR => P9.QtDir,
        HostCalls.S_IFLNK => P9.QtSymlink,
        _ => P9.QtFile,
    };

    /// <summary>Linux's new_encode_dev: what 9P2000.L carries in rdev.</summary>
    public ulong Rdev => (RdevMinor & 0xff) | (RdevMajor << 8) | ((ulong)(RdevMinor & ~0xffu) << 12);
}

/// <summary>
/// The host descriptors one session holds, counted against <see cref="HostFsOptions.MaxDescriptors"/>. Requests run
/// one at a time under the session's lock, so plain integers suffice.
/// </summary>
internal sealed class DescriptorBudget(int max)
{
    public int Count { get; set; }

    public bool CanTake(int n) => Count + n <= max;
}

/// <summary>
/// One O_PATH descriptor shared by every fid (and every child's parent link) that stands for the same walked node:
/// a walk from a directory makes the directory's handle the child's parent without another descriptor. Closed when
/// the last reference goes.
/// </summary>
internal sealed class HostHandle
{
    private readonly DescriptorBudget _budget;
    private int _refs = 1;

    public HostHandle(int fd, DescriptorBudget budget)
    {
        Fd = fd;
        _budget = budget;
        budget.Count++;
    }

    public int Fd { get; private set; }

    public HostHandle AddRef()
    {
        _refs++;
        return this;
    }

    public void Release()
    {
        if (--_refs == 0 && Fd >= 0)
        {
            HostCalls.Close(Fd);
            Fd = -1;
            _budget.Count--;
        }
    }
}

/// <summary>
/// What one fid points at: an O_PATH handle of its node (no I/O possible through it; it keeps meaning the same inode
/// whatever happens to names), the O_PATH handle of the directory it was walked from with the name it had there (to
/// remove or rename it: both are checked to still mean this node first), and, once Tlopen'ed or Tlcreate'd, a second
/// descriptor for I/O. No path string is ever kept: a name may come to mean another file at any time.
/// </summary>
internal sealed class HostFid(HostHandle node, HostHandle? parent, string? name, uint type, DescriptorBudget budget)
{
    private bool _closed;

    public HostHandle Node { get; private set; } = node;

    public int PathFd => Node.Fd;

    /// <summary>The directory this fid was walked from (or created in); null for the root, and after ".." (the
    /// walk gives the directory itself, not its name).</summary>
    public HostHandle? Parent { get; private set; } = parent;

    /// <summary>The name of the node in <see cref="Parent"/> when it was walked, created or renamed by this session.</summary>
    public string? Name { get; private set; } = name;

    public uint Type { get; private set; } = type;

    public int OpenFd { get; private set; } = -1;

    public bool OpenForWrite { get; private set; }

    public bool IsOpen => OpenFd >= 0;

    public bool IsDirectory => Type == HostCalls.S_IFDIR;

    public void SetOpen(int fd, bool forWrite)
    {
        OpenFd = fd;
        OpenForWrite = forWrite;
        budget.Count++;
    }

    /// <summary>Points the fid at another directory entry (after a rename); takes a reference to <paramref name="parent"/>.</summary>
    public void MoveTo(HostHandle parent, string name)
    {
        parent.AddRef();
        Parent?.Release();
        Parent = parent;
        Name = name;
    }

    /// <summary>Makes the fid stand for another node (a walk onto itself, a Tlcreate); takes over the references.</summary>
    public void Retarget(HostHandle node, HostHandle? parent, string? name, uint type)
    {
        Parent?.Release();
        Node.Release();
        Node = node;
        Parent = parent;
        Name = name;
        Type = type;
    }

    public void Close()
    {
        if (_closed)
        {
            return;
        }
        _closed = true;
        if (OpenFd >= 0)
        {
            HostCalls.Close(OpenFd);
            OpenFd = -1;
            budget.Count--;
        }
        Parent?.Release();
        Parent = null;
        Node.Release();
    }
}
