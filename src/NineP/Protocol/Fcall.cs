namespace Kit.NineP.Protocol;

/// <summary>
/// One 9P message of any type, T or R, in the spirit of Plan 9's Fcall: only the fields of <see cref="Type"/>
/// are meaningful. One shape for all messages keeps the codec, the client and the server small, and makes
/// round-trip tests trivial.
/// </summary>
public sealed class Fcall
{
    public MessageType Type { get; set; }
    public ushort Tag { get; set; }

    public uint Msize { get; set; }
    public string Version { get; set; } = "";

    public uint Fid { get; set; }
    public uint Afid { get; set; }
    public uint NewFid { get; set; }
    /// <summary>Second directory fid: Tlink/Tmkdir/Tmknod dfid, Trename dfid, Trenameat newdirfid.</summary>
    public uint DFid { get; set; }
    public string Uname { get; set; } = "";
    public string Aname { get; set; } = "";
    public uint NUname { get; set; } = uint.MaxValue;

    public string Ename { get; set; } = "";
    public uint Errno { get; set; }

    public ushort OldTag { get; set; }

    public string[] Wnames { get; set; } = [];
    public Qid[] Wqids { get; set; } = [];

    public Qid Qid { get; set; }
    public uint Iounit { get; set; }
    public byte Mode { get; set; }
    public uint Perm { get; set; }
    public string Name { get; set; } = "";
    /// <summary>Trenameat's new name, Tsymlink's target, Rreadlink's target.</summary>
    public string Name2 { get; set; } = "";
    public string Extension { get; set; } = "";

    public ulong Offset { get; set; }
    public uint Count { get; set; }
    public ReadOnlyMemory<byte> Data { get; set; }

    public Stat? Stat { get; set; }

    /// <summary>.L: open/create flags, unlinkat flags, lock flags, fsync datasync, xattrcreate flags.</summary>
    public uint Flags { get; set; }
    /// <summary>.L: the Linux mode in lcreate, mkdir, mknod, symlink (unused).</summary>
    public uint LMode { get; set; }
    public uint Gid { get; set; }
    public uint Major { get; set; }
    public uint Minor { get; set; }
    public ulong RequestMask { get; set; }
    /// <summary>.L xattr sizes.</summary>
    public ulong Size { get; set; }
    public LAttr? Attr { get; set; }
    public LSetAttr? SetAttr { get; set; }
    public LStatFs? StatFs { get; set; }

    /// <summary>Tlock/Tgetlock/Rgetlock fields; Rlock status is <see cref="LockStatus"/>.</summary>
    public byte LockType { get; set; }
    public ulong LockStart { get; set; }
    public ulong LockLength { get; set; }
    public uint ProcId { get; set; }
    public string ClientId { get; set; } = "";
    public byte LockStatus { get; set; }

    public override string ToString() => $"{Type} tag={Tag} fid={Fid}";
}
