namespace Kit.NineP.Protocol;

/// <summary>A qid: type[1] version[4] path[8] (intro(5)). The server's unique id for a file.</summary>
public readonly record struct Qid(byte Type, uint Version, ulong Path)
{
    public const int Size = 13;
    public bool IsDirectory => (Type & P9.QtDir) != 0;
}

/// <summary>
/// A 9P2000 stat record (stat(5)) with the 9P2000.u additions (extension, numeric ids).
/// "Don't touch" values in Twstat are all-ones numbers and empty strings.
/// </summary>
public sealed record Stat
{
    public ushort Type { get; init; }
    public uint Dev { get; init; }
    public Qid Qid { get; init; }
    public uint Mode { get; init; }
    public uint Atime { get; init; }
    public uint Mtime { get; init; }
    public ulong Length { get; init; }
    public string Name { get; init; } = "";
    public string Uid { get; init; } = "";
    public string Gid { get; init; } = "";
    public string Muid { get; init; } = "";
    public string Extension { get; init; } = "";
    public uint NUid { get; init; }
    public uint NGid { get; init; }
    public uint NMuid { get; init; }

    /// <summary>A Twstat template that changes nothing (stat(5): ~0 numbers, empty strings).</summary>
    public static Stat DontTouch { get; } = new()
    {
        Type = ushort.MaxValue, Dev = uint.MaxValue, Qid = new Qid(byte.MaxValue, uint.MaxValue, ulong.MaxValue),
        Mode = uint.MaxValue, Atime = uint.MaxValue, Mtime = uint.MaxValue, Length = ulong.MaxValue,
        NUid = uint.MaxValue, NGid = uint.MaxValue, NMuid = uint.MaxValue,
    };
}

/// <summary>Rgetattr's body (9P2000.L).</summary>
public sealed record LAttr
{
    public ulong Valid { get; init; }
    public Qid Qid { get; init; }
    public uint Mode { get; init; }
    public uint Uid { get; init; }
    public uint Gid { get; init; }
    public ulong NLink { get; init; }
    public ulong RDev { get; init; }
    public ulong Size { get; init; }
    public ulong BlkSize { get; init; }
    public ulong Blocks { get; init; }
    public ulong AtimeSec { get; init; }
    public ulong AtimeNsec { get; init; }
    public ulong MtimeSec { get; init; }
    public ulong MtimeNsec { get; init; }
    public ulong CtimeSec { get; init; }
    public ulong CtimeNsec { get; init; }
    public ulong BtimeSec { get; init; }
    public ulong BtimeNsec { get; init; }
    public ulong Gen { get; init; }
    public ulong DataVersion { get; init; }
}

/// <summary>Tsetattr's body (9P2000.L); <see cref="Valid"/> says which fields count (P9.Attr*).</summary>
public sealed record LSetAttr
{
    public uint Valid { get; init; }
    public uint Mode { get; init; }
    public uint Uid { get; init; }
    public uint Gid { get; init; }
    public ulong Size { get; init; }
    public ulong AtimeSec { get; init; }
    public ulong AtimeNsec { get; init; }
    public ulong MtimeSec { get; init; }
    public ulong MtimeNsec { get; init; }
}

/// <summary>Rstatfs's body (9P2000.L).</summary>
public sealed record LStatFs
{
    public uint Type { get; init; }
    public uint BSize { get; init; }
    public ulong Blocks { get; init; }
    public ulong BFree { get; init; }
    public ulong BAvail { get; init; }
    public ulong Files { get; init; }
    public ulong FFree { get; init; }
    public ulong FsId { get; init; }
    public uint NameLen { get; init; }
}

/// <summary>One Treaddir entry: qid[13] offset[8] type[1] name[s].</summary>
public readonly record struct DirEntry(Qid Qid, ulong Offset, byte Type, string Name);
