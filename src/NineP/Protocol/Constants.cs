namespace Kit.NineP.Protocol;

/// <summary>Message type numbers: 9P2000 (intro(5)), 9P2000.u, and 9P2000.L (Linux include/net/9p/9p.h).</summary>
public enum MessageType : byte
{
    Tlerror = 6, Rlerror = 7,
    Tstatfs = 8, Rstatfs = 9,
    Tlopen = 12, Rlopen = 13,
    Tlcreate = 14, Rlcreate = 15,
    Tsymlink = 16, Rsymlink = 17,
    Tmknod = 18, Rmknod = 19,
    Trename = 20, Rrename = 21,
    Treadlink = 22, Rreadlink = 23,
    Tgetattr = 24, Rgetattr = 25,
    Tsetattr = 26, Rsetattr = 27,
    Txattrwalk = 30, Rxattrwalk = 31,
    Txattrcreate = 32, Rxattrcreate = 33,
    Treaddir = 40, Rreaddir = 41,
    Tfsync = 50, Rfsync = 51,
    Tlock = 52, Rlock = 53,
    Tgetlock = 54, Rgetlock = 55,
    Tlink = 70, Rlink = 71,
    Tmkdir = 72, Rmkdir = 73,
    Trenameat = 74, Rrenameat = 75,
    Tunlinkat = 76, Runlinkat = 77,
    Tversion = 100, Rversion = 101,
    Tauth = 102, Rauth = 103,
    Tattach = 104, Rattach = 105,
    Terror = 106, Rerror = 107,
    Tflush = 108, Rflush = 109,
    Twalk = 110, Rwalk = 111,
    Topen = 112, Ropen = 113,
    Tcreate = 114, Rcreate = 115,
    Tread = 116, Rread = 117,
    Twrite = 118, Rwrite = 119,
    Tclunk = 120, Rclunk = 121,
    Tremove = 122, Rremove = 123,
    Tstat = 124, Rstat = 125,
    Twstat = 126, Rwstat = 127,
}

/// <summary>The three dialects this library speaks. The version string picks one (intro(5), version(5)).</summary>
public enum Dialect : byte
{
    /// <summary>Plain 9P2000.</summary>
    Legacy,
    /// <summary>9P2000.u: numeric errors, symlinks and devices through stat's extension field.</summary>
    Unix,
    /// <summary>9P2000.L: Linux-shaped operations (getattr, lopen, readdir, ...), errors are Linux errnos.</summary>
    Linux,
}

/// <summary>Protocol constants from intro(5), stat(5) and the 9P2000.u/.L documents.</summary>
public static class P9
{
    public const ushort NoTag = 0xFFFF;
    public const uint NoFid = 0xFFFFFFFF;
    /// <summary>walk(5): at most 16 names per Twalk.</summary>
    public const int MaxWalkElements = 16;
    /// <summary>size[4] type[1] tag[2].</summary>
    public const int HeaderSize = 7;
    /// <summary>Rread/Rwrite overhead: header + count[4]; clients use msize - this as the largest payload.</summary>
    public const int IoHeaderSize = 11;

    public const byte QtDir = 0x80, QtAppend = 0x40, QtExcl = 0x20, QtMount = 0x10, QtAuth = 0x08, QtTmp = 0x04, QtSymlink = 0x02, QtLink = 0x01, QtFile = 0;

    public const uint DmDir = 0x80000000, DmAppend = 0x40000000, DmExcl = 0x20000000, DmMount = 0x10000000,
        DmAuth = 0x08000000, DmTmp = 0x04000000, DmSymlink = 0x02000000, DmLink = 0x01000000,
        DmDevice = 0x00800000, DmNamedPipe = 0x00200000, DmSocket = 0x00100000, DmSetUid = 0x00080000, DmSetGid = 0x00040000;

    public const byte OREAD = 0, OWRITE = 1, ORDWR = 2, OEXEC = 3, OTRUNC = 0x10, ORCLOSE = 0x40;

    public const string Version2000 = "9P2000", VersionU = "9P2000.u", VersionL = "9P2000.L", VersionUnknown = "unknown";

    /// <summary>Linux stat mode bits used by 9P2000.L (S_IFMT family).</summary>
    public const uint SIfDir = 0x4000, SIfReg = 0x8000, SIfLnk = 0xA000;

    /// <summary>P9_GETATTR_BASIC: the mask Linux asks for in Tgetattr.</summary>
    public const ulong GetattrBasic = 0x7ff;

    /// <summary>Tsetattr valid bits (Linux include/net/9p/9p.h, P9_ATTR_*).</summary>
    public const uint AttrMode = 0x1, AttrUid = 0x2, AttrGid = 0x4, AttrSize = 0x8, AttrAtime = 0x10, AttrMtime = 0x20, AttrCtime = 0x40;

    /// <summary>Linux open flags as carried by Tlopen/Tlcreate.</summary>
    public const uint LOWronly = 1, LORdwr = 2, LOCreat = 0x40, LOExcl = 0x80, LOTrunc = 0x200, LOAppend = 0x400;

    /// <summary>Tunlinkat flag AT_REMOVEDIR.</summary>
    public const uint AtRemoveDir = 0x200;
}

/// <summary>Linux errno values sent in Rlerror and in 9P2000.u's Rerror.</summary>
public static class Errno
{
    public const uint EPERM = 1, ENOENT = 2, EIO = 5, EBADF = 9, EAGAIN = 11, ENOMEM = 12, EACCES = 13, EEXIST = 17, EXDEV = 18,
        ENOTDIR = 20, EISDIR = 21, EINVAL = 22, EMFILE = 24, EFBIG = 27, ENOSPC = 28, ESPIPE = 29, EROFS = 30,
        ERANGE = 34, ENAMETOOLONG = 36, ENOSYS = 38, ENOTEMPTY = 39, ENODATA = 61, EPROTO = 71, EMSGSIZE = 90,
        EOPNOTSUPP = 95, ECONNRESET = 104, ECANCELED = 125;
}
