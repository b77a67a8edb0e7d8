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

/// <summary>What one fid points at: an O_PATH descriptor (no I/O possible through it), its path below the root,
/// and, once Tlopen'ed or Tlcreate'd, a second descriptor for I/O.</summary>
internal sealed class HostFid(int pathFd, string[] path, uint type)
{
    public int PathFd { get; set; } = pathFd;

    /// <summary>Names from the export root; only used for ".." and for operations on the parent (rename, remove).</summary>
    public string[] Path { get; set; } = path;

    public uint Type { get; set; } = type;

    public int OpenFd { get; set; } = -1;

    public bool OpenForWrite { get; set; }

    public bool IsOpen => OpenFd >= 0;

    public bool IsDirectory => Type == HostCalls.S_IFDIR;

    public void Close()
    {
        if (OpenFd >= 0)
        {
            HostCalls.Close(OpenFd);
            OpenFd = -1;
        }
        if (PathFd >= 0)
        {
            HostCalls.Close(PathFd);
            PathFd = -1;
        }
    }
}
