using System.Buffers.Binary;

namespace Kit.NineP.Protocol;

/// <summary>
/// Encodes and decodes whole 9P frames (size[4] type[1] tag[2] body, intro(5)) for the three dialects.
/// Decoding takes untrusted bytes and never throws: it returns false and a reason. Every variable-length
/// field is checked against the frame before anything is allocated, so a frame can cost at most its own size.
/// </summary>
public static class FcallCodec
{
    /// <summary>Reads the 7-byte header. The size must cover at least the header itself.</summary>
    public static bool TryReadHeader(ReadOnlySpan<byte> bytes, out uint size, out MessageType type, out ushort tag)
    {
        size = 0;
        type = 0;
        tag = 0;
        if (bytes.Length < P9.HeaderSize)
        {
            return false;
        }
        size = BinaryPrimitives.ReadUInt32LittleEndian(bytes);
        type = (MessageType)bytes[4];
        tag = BinaryPrimitives.ReadUInt16LittleEndian(bytes[5..]);
        return size >= P9.HeaderSize;
    }

    public static bool IsKnown(MessageType type) => Enum.IsDefined(type) && type is not MessageType.Tlerror and not MessageType.Terror;

    /// <summary>Decodes one whole frame (exactly <c>size</c> bytes).</summary>
    public static bool TryDecode(ReadOnlySpan<byte> frame, Dialect dialect, out Fcall fcall, out string reason)
    {
        fcall = new Fcall();
        if (!TryReadHeader(frame, out uint size, out MessageType type, out ushort tag))
        {
            reason = "short header";
            return false;
        }
        if (size != frame.Length)
        {
            reason = $"size field {size} does not match frame length {frame.Length}";
            return false;
        }
        if (!IsKnown(type))
        {
            reason = $"unknown message type {(byte)type}";
            return false;
        }
        fcall.Type = type;
        fcall.Tag = tag;
        var r = new WireReader(frame[P9.HeaderSize..]);
        bool u = dialect != Dialect.Legacy;
        switch (type)
        {
            case MessageType.Tversion:
            case MessageType.Rversion:
                fcall.Msize = r.U32();
                fcall.Version = r.Str();
                break;
            case MessageType.Tauth:
                fcall.Afid = r.U32();
                fcall.Uname = r.Str();
                fcall.Aname = r.Str();
                if (u)
                {
                    fcall.NUname = r.U32();
                }
                break;
            case MessageType.Rauth:
            case MessageType.Rattach:
            case MessageType.Rsymlink:
            case MessageType.Rmknod:
            case MessageType.Rmkdir:
                fcall.Qid = r.Qid();
                break;
            case MessageType.Tattach:
                fcall.Fid = r.U32();
                fcall.Afid = r.U32();
                fcall.Uname = r.Str();
                fcall.Aname = r.Str();
                if (u)
                {
                    fcall.NUname = r.U32();
                }
                break;
            case MessageType.Rerror:
                fcall.Ename = r.Str();
                if (u)
                {
                    fcall.Errno = r.U32();
                }
                break;
            case MessageType.Rlerror:
                fcall.Errno = r.U32();
                break;
            case MessageType.Tflush:
                fcall.OldTag = r.U16();
                break;
            case MessageType.Twalk:
            {
                fcall.Fid = r.U32();
                fcall.NewFid = r.U32();
                ushort n = r.U16();
                if (n > P9.MaxWalkElements)
                {
                    reason = $"walk of {n} names exceeds {P9.MaxWalkElements}";
                    return false;
                }
                var names = new string[n];
                for (int i = 0; i < n && r.Ok; i++)
                {
                    names[i] = r.Str();
                }
                fcall.Wnames = names;
                break;
            }
            case MessageType.Rwalk:
            {
                ushort n = r.U16();
                if (n > P9.MaxWalkElements)
                {
                    reason = $"walk reply of {n} qids exceeds {P9.MaxWalkElements}";
                    return false;
                }
                var qids = new Qid[n];
                for (int i = 0; i < n && r.Ok; i++)
                {
                    qids[i] = r.Qid();
                }
                fcall.Wqids = qids;
                break;
            }
            case MessageType.Topen:
                fcall.Fid = r.U32();
                fcall.Mode = r.U8();
                break;
            case MessageType.Ropen:
            case MessageType.Rcreate:
            case MessageType.Rlopen:
            case MessageType.Rlcreate:
                fcall.Qid = r.Qid();
                fcall.Iounit = r.U32();
                break;
            case MessageType.Tcreate:
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                fcall.Perm = r.U32();
                fcall.Mode = r.U8();
                if (u)
                {
                    fcall.Extension = r.Str();
                }
                break;
            case MessageType.Tread:
            case MessageType.Treaddir:
                fcall.Fid = r.U32();
                fcall.Offset = r.U64();
                fcall.Count = r.U32();
                break;
            case MessageType.Rread:
            case MessageType.Rreaddir:
            {
                uint count = r.U32();
                if (count > (uint)r.Remaining)
                {
                    reason = "read reply count exceeds frame";
                    return false;
                }
                fcall.Count = count;
                fcall.Data = r.Bytes((int)count).ToArray();
                break;
            }
            case MessageType.Twrite:
            {
                fcall.Fid = r.U32();
                fcall.Offset = r.U64();
                uint count = r.U32();
                if (count > (uint)r.Remaining)
                {
                    reason = "write count exceeds frame";
                    return false;
                }
                fcall.Count = count;
                fcall.Data = r.Bytes((int)count).ToArray();
                break;
            }
            case MessageType.Rwrite:
                fcall.Count = r.U32();
                break;
            case MessageType.Tclunk:
            case MessageType.Tremove:
            case MessageType.Tstat:
            case MessageType.Tstatfs:
            case MessageType.Treadlink:
                fcall.Fid = r.U32();
                break;
            case MessageType.Tfsync:
                fcall.Fid = r.U32();
                // Older kernels send only fid[4]; newer ones add datasync[4].
                if (r.Remaining >= 4)
                {
                    fcall.Flags = r.U32();
                }
                break;
            case MessageType.Rflush:
            case MessageType.Rclunk:
            case MessageType.Rremove:
            case MessageType.Rwstat:
            case MessageType.Rrename:
            case MessageType.Rsetattr:
            case MessageType.Rxattrcreate:
            case MessageType.Rfsync:
            case MessageType.Rlink:
            case MessageType.Rrenameat:
            case MessageType.Runlinkat:
                break;
            case MessageType.Rstat:
            {
                ushort n = r.U16();
                if (n > r.Remaining)
                {
                    reason = "stat length exceeds frame";
                    return false;
                }
                var inner = new WireReader(r.Bytes(n));
                fcall.Stat = StatCodec.Read(ref inner, dialect);
                if (!inner.Ok)
                {
                    r.Fail();
                }
                break;
            }
            case MessageType.Twstat:
            {
                fcall.Fid = r.U32();
                ushort n = r.U16();
                if (n > r.Remaining)
                {
                    reason = "stat length exceeds frame";
                    return false;
                }
                var inner = new WireReader(r.Bytes(n));
                fcall.Stat = StatCodec.Read(ref inner, dialect);
                if (!inner.Ok)
                {
                    r.Fail();
                }
                break;
            }
            case MessageType.Rstatfs:
                fcall.StatFs = new LStatFs
                {
                    Type = r.U32(), BSize = r.U32(), Blocks = r.U64(), BFree = r.U64(), BAvail = r.U64(),
                    Files = r.U64(), FFree = r.U64(), FsId = r.U64(), NameLen = r.U32(),
                };
                break;
            case MessageType.Tlopen:
                fcall.Fid = r.U32();
                fcall.Flags = r.U32();
                break;
            case MessageType.Tlcreate:
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                fcall.Flags = r.U32();
                fcall.LMode = r.U32();
                fcall.Gid = r.U32();
                break;
            case MessageType.Tsymlink:
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                fcall.Name2 = r.Str();
                fcall.Gid = r.U32();
                break;
            case MessageType.Tmknod:
                fcall.DFid = r.U32();
                fcall.Name = r.Str();
                fcall.LMode = r.U32();
                fcall.Major = r.U32();
                fcall.Minor = r.U32();
                fcall.Gid = r.U32();
                break;
            case MessageType.Trename:
                fcall.Fid = r.U32();
                fcall.DFid = r.U32();
                fcall.Name = r.Str();
                break;
            case MessageType.Rreadlink:
                fcall.Name2 = r.Str();
                break;
            case MessageType.Tgetattr:
                fcall.Fid = r.U32();
                fcall.RequestMask = r.U64();
                break;
            case MessageType.Rgetattr:
                fcall.Attr = new LAttr
                {
                    Valid = r.U64(), Qid = r.Qid(), Mode = r.U32(), Uid = r.U32(), Gid = r.U32(), NLink = r.U64(),
                    RDev = r.U64(), Size = r.U64(), BlkSize = r.U64(), Blocks = r.U64(),
                    AtimeSec = r.U64(), AtimeNsec = r.U64(), MtimeSec = r.U64(), MtimeNsec = r.U64(),
                    CtimeSec = r.U64(), CtimeNsec = r.U64(), BtimeSec = r.U64(), BtimeNsec = r.U64(),
                    Gen = r.U64(), DataVersion = r.U64(),
                };
                break;
            case MessageType.Tsetattr:
                fcall.Fid = r.U32();
                fcall.SetAttr = new LSetAttr
                {
                    Valid = r.U32(), Mode = r.U32(), Uid = r.U32(), Gid = r.U32(), Size = r.U64(),
                    AtimeSec = r.U64(), AtimeNsec = r.U64(), MtimeSec = r.U64(), MtimeNsec = r.U64(),
                };
                break;
            case MessageType.Txattrwalk:
                fcall.Fid = r.U32();
                fcall.NewFid = r.U32();
                fcall.Name = r.Str();
                break;
            case MessageType.Rxattrwalk:
                fcall.Size = r.U64();
                break;
            case MessageType.Txattrcreate:
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                fcall.Size = r.U64();
                fcall.Flags = r.U32();
                break;
            case MessageType.Tlock:
                fcall.Fid = r.U32();
                fcall.LockType = r.U8();
                fcall.Flags = r.U32();
                fcall.LockStart = r.U64();
                fcall.LockLength = r.U64();
                fcall.ProcId = r.U32();
                fcall.ClientId = r.Str();
                break;
            case MessageType.Rlock:
                fcall.LockStatus = r.U8();
                break;
            case MessageType.Tgetlock:
                fcall.Fid = r.U32();
                fcall.LockType = r.U8();
                fcall.LockStart = r.U64();
                fcall.LockLength = r.U64();
                fcall.ProcId = r.U32();
                fcall.ClientId = r.Str();
                break;
            case MessageType.Rgetlock:
                fcall.LockType = r.U8();
                fcall.LockStart = r.U64();
                fcall.LockLength = r.U64();
                fcall.ProcId = r.U32();
                fcall.ClientId = r.Str();
                break;
            case MessageType.Tlink:
                fcall.DFid = r.U32();
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                break;
            case MessageType.Tmkdir:
                fcall.DFid = r.U32();
                fcall.Name = r.Str();
                fcall.LMode = r.U32();
                fcall.Gid = r.U32();
                break;
            case MessageType.Trenameat:
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                fcall.DFid = r.U32();
                fcall.Name2 = r.Str();
                break;
            case MessageType.Tunlinkat:
                fcall.Fid = r.U32();
                fcall.Name = r.Str();
                fcall.Flags = r.U32();
                break;
            default:
                reason = $"unhandled message type {type}";
                return false;
        }
        if (!r.Ok)
        {
            reason = $"truncated or malformed {type}";
            return false;
        }
        reason = "";
        return true;
    }

    /// <summary>Encodes <paramref name="f"/> into <paramref name="dst"/>; returns the frame length, or -1 if it does not fit.</summary>
    public static int Encode(Fcall f, Dialect dialect, Span<byte> dst)
    {
        var w = new WireWriter(dst);
        int sizeAt = w.Reserve(4);
        w.U8((byte)f.Type);
        w.U16(f.Tag);
        bool u = dialect != Dialect.Legacy;
        switch (f.Type)
        {
            case MessageType.Tversion:
            case MessageType.Rversion:
                w.U32(f.Msize);
                w.Str(f.Version);
                break;
            case MessageType.Tauth:
                w.U32(f.Afid);
                w.Str(f.Uname);
                w.Str(f.Aname);
                if (u)
                {
                    w.U32(f.NUname);
                }
                break;
            case MessageType.Rauth:
            case MessageType.Rattach:
            case MessageType.Rsymlink:
            case MessageType.Rmknod:
            case MessageType.Rmkdir:
                w.Qid(f.Qid);
                break;
            case MessageType.Tattach:
                w.U32(f.Fid);
                w.U32(f.Afid);
                w.Str(f.Uname);
                w.Str(f.Aname);
                if (u)
                {
                    w.U32(f.NUname);
                }
                break;
            case MessageType.Rerror:
                w.Str(f.Ename);
                if (u)
                {
                    w.U32(f.Errno);
                }
                break;
            case MessageType.Rlerror:
                w.U32(f.Errno);
                break;
            case MessageType.Tflush:
                w.U16(f.OldTag);
                break;
            case MessageType.Twalk:
                w.U32(f.Fid);
                w.U32(f.NewFid);
                w.U16((ushort)f.Wnames.Length);
                foreach (string name in f.Wnames)
                {
                    w.Str(name);
                }
                break;
            case MessageType.Rwalk:
                w.U16((ushort)f.Wqids.Length);
                foreach (Qid q in f.Wqids)
                {
                    w.Qid(q);
                }
                break;
            case MessageType.Topen:
                w.U32(f.Fid);
                w.U8(f.Mode);
                break;
            case MessageType.Ropen:
            case MessageType.Rcreate:
            case MessageType.Rlopen:
            case MessageType.Rlcreate:
                w.Qid(f.Qid);
                w.U32(f.Iounit);
                break;
            case MessageType.Tcreate:
                w.U32(f.Fid);
                w.Str(f.Name);
                w.U32(f.Perm);
                w.U8(f.Mode);
                if (u)
                {
                    w.Str(f.Extension);
                }
                break;
            case MessageType.Tread:
            case MessageType.Treaddir:
                w.U32(f.Fid);
                w.U64(f.Offset);
                w.U32(f.Count);
                break;
            case MessageType.Rread:
            case MessageType.Rreaddir:
                w.U32((uint)f.Data.Length);
                w.Bytes(f.Data.Span);
                break;
            case MessageType.Twrite:
                w.U32(f.Fid);
                w.U64(f.Offset);
                w.U32((uint)f.Data.Length);
                w.Bytes(f.Data.Span);
                break;
            case MessageType.Rwrite:
                w.U32(f.Count);
                break;
            case MessageType.Tclunk:
            case MessageType.Tremove:
            case MessageType.Tstat:
            case MessageType.Tstatfs:
            case MessageType.Treadlink:
                w.U32(f.Fid);
                break;
            case MessageType.Tfsync:
                w.U32(f.Fid);
                w.U32(f.Flags);
                break;
            case MessageType.Rflush:
            case MessageType.Rclunk:
            case MessageType.Rremove:
            case MessageType.Rwstat:
            case MessageType.Rrename:
            case MessageType.Rsetattr:
            case MessageType.Rxattrcreate:
            case MessageType.Rfsync:
            case MessageType.Rlink:
            case MessageType.Rrenameat:
            case MessageType.Runlinkat:
                break;
            case MessageType.Rstat:
            {
                int nAt = w.Reserve(2);
                int start = w.Position;
                StatCodec.Write(ref w, f.Stat ?? new Stat(), dialect);
                w.PatchU16(nAt, (ushort)(w.Position - start));
                break;
            }
            case MessageType.Twstat:
            {
                w.U32(f.Fid);
                int nAt = w.Reserve(2);
                int start = w.Position;
                StatCodec.Write(ref w, f.Stat ?? Stat.DontTouch, dialect);
                w.PatchU16(nAt, (ushort)(w.Position - start));
                break;
            }
            case MessageType.Rstatfs:
            {
                LStatFs s = f.StatFs ?? new LStatFs();
                w.U32(s.Type);
                w.U32(s.BSize);
                w.U64(s.Blocks);
                w.U64(s.BFree);
                w.U64(s.BAvail);
                w.U64(s.Files);
                w.U64(s.FFree);
                w.U64(s.FsId);
                w.U32(s.NameLen);
                break;
            }
            case MessageType.Tlopen:
                w.U32(f.Fid);
                w.U32(f.Flags);
                break;
            case MessageType.Tlcreate:
                w.U32(f.Fid);
                w.Str(f.Name);
                w.U32(f.Flags);
                w.U32(f.LMode);
                w.U32(f.Gid);
                break;
            case MessageType.Tsymlink:
                w.U32(f.Fid);
                w.Str(f.Name);
                w.Str(f.Name2);
                w.U32(f.Gid);
                break;
            case MessageType.Tmknod:
                w.U32(f.DFid);
                w.Str(f.Name);
                w.U32(f.LMode);
                w.U32(f.Major);
                w.U32(f.Minor);
                w.U32(f.Gid);
                break;
            case MessageType.Trename:
                w.U32(f.Fid);
                w.U32(f.DFid);
                w.Str(f.Name);
                break;
            case MessageType.Rreadlink:
                w.Str(f.Name2);
                break;
            case MessageType.Tgetattr:
                w.U32(f.Fid);
                w.U64(f.RequestMask);
                break;
            case MessageType.Rgetattr:
            {
                LAttr a = f.Attr ?? new LAttr();
                w.U64(a.Valid);
                w.Qid(a.Qid);
                w.U32(a.Mode);
                w.U32(a.Uid);
                w.U32(a.Gid);
                w.U64(a.NLink);
                w.U64(a.RDev);
                w.U64(a.Size);
                w.U64(a.BlkSize);
                w.U64(a.Blocks);
                w.U64(a.AtimeSec);
                w.U64(a.AtimeNsec);
                w.U64(a.MtimeSec);
                w.U64(a.MtimeNsec);
                w.U64(a.CtimeSec);
                w.U64(a.CtimeNsec);
                w.U64(a.BtimeSec);
                w.U64(a.BtimeNsec);
                w.U64(a.Gen);
                w.U64(a.DataVersion);
                break;
            }
            case MessageType.Tsetattr:
            {
                LSetAttr s = f.SetAttr ?? new LSetAttr();
                w.U32(f.Fid);
                w.U32(s.Valid);
                w.U32(s.Mode);
                w.U32(s.Uid);
                w.U32(s.Gid);
                w.U64(s.Size);
                w.U64(s.AtimeSec);
                w.U64(s.AtimeNsec);
                w.U64(s.MtimeSec);
                w.U64(s.MtimeNsec);
                break;
            }
            case MessageType.Txattrwalk:
                w.U32(f.Fid);
                w.U32(f.NewFid);
                w.Str(f.Name);
                break;
            case MessageType.Rxattrwalk:
                w.U64(f.Size);
                break;
            case MessageType.Txattrcreate:
                w.U32(f.Fid);
                w.Str(f.Name);
                w.U64(f.Size);
                w.U32(f.Flags);
                break;
            case MessageType.Tlock:
                w.U32(f.Fid);
                w.U8(f.LockType);
                w.U32(f.Flags);
                w.U64(f.LockStart);
                w.U64(f.LockLength);
                w.U32(f.ProcId);
                w.Str(f.ClientId);
                break;
            case MessageType.Rlock:
                w.U8(f.LockStatus);
                break;
            case MessageType.Tgetlock:
                w.U32(f.Fid);
                w.U8(f.LockType);
                w.U64(f.LockStart);
                w.U64(f.LockLength);
                w.U32(f.ProcId);
                w.Str(f.ClientId);
                break;
            case MessageType.Rgetlock:
                w.U8(f.LockType);
                w.U64(f.LockStart);
                w.U64(f.LockLength);
                w.U32(f.ProcId);
                w.Str(f.ClientId);
                break;
            case MessageType.Tlink:
                w.U32(f.DFid);
                w.U32(f.Fid);
                w.Str(f.Name);
                break;
            case MessageType.Tmkdir:
                w.U32(f.DFid);
                w.Str(f.Name);
                w.U32(f.LMode);
                w.U32(f.Gid);
                break;
            case MessageType.Trenameat:
                w.U32(f.Fid);
                w.Str(f.Name);
                w.U32(f.DFid);
                w.Str(f.Name2);
                break;
            case MessageType.Tunlinkat:
                w.U32(f.Fid);
                w.Str(f.Name);
                w.U32(f.Flags);
                break;
            default:
                return -1;
        }
        if (w.Overflow)
        {
            return -1;
        }
        w.PatchU32(sizeAt, (uint)w.Position);
        return w.Position;
    }
}

/// <summary>stat(5) records, with the 9P2000.u tail when the dialect is not legacy.</summary>
public static class StatCodec
{
    public static void Write(ref WireWriter w, Stat s, Dialect dialect)
    {
        int sizeAt = w.Reserve(2);
        int start = w.Position;
        w.U16(s.Type);
        w.U32(s.Dev);
        w.Qid(s.Qid);
        w.U32(s.Mode);
        w.U32(s.Atime);
        w.U32(s.Mtime);
        w.U64(s.Length);
        w.Str(s.Name);
        w.Str(s.Uid);
        w.Str(s.Gid);
        w.Str(s.Muid);
        if (dialect != Dialect.Legacy)
        {
            w.Str(s.Extension);
            w.U32(s.NUid);
            w.U32(s.NGid);
            w.U32(s.NMuid);
        }
        w.PatchU16(sizeAt, (ushort)(w.Position - start));
    }

    /// <summary>Reads one stat record including its size[2]; on failure the reader's Ok turns false.</summary>
    public static Stat Read(ref WireReader r, Dialect dialect)
    {
        ushort size = r.U16();
        if (size > r.Remaining)
        {
            r.Fail();
            return new Stat();
        }
        var inner = new WireReader(r.Bytes(size));
        var s = new Stat
        {
            Type = inner.U16(), Dev = inner.U32(), Qid = inner.Qid(), Mode = inner.U32(), Atime = inner.U32(),
            Mtime = inner.U32(), Length = inner.U64(), Name = inner.Str(), Uid = inner.Str(), Gid = inner.Str(), Muid = inner.Str(),
        };
        // Be lenient about the .u tail: some clients send a legacy-sized stat in Twstat even on .u.
        if (dialect != Dialect.Legacy && inner.Remaining > 0)
        {
            s = s with { Extension = inner.Str(), NUid = inner.U32(), NGid = inner.U32(), NMuid = inner.U32() };
        }
        if (!inner.Ok)
        {
            r.Fail();
        }
        return s;
    }

    /// <summary>The encoded size of a stat record (including its size[2]).</summary>
    public static int SizeOf(Stat s, Dialect dialect)
    {
        int n = 2 + 2 + 4 + Qid.Size + 4 + 4 + 4 + 8 + 8
            + NineString.GetByteCount(s.Name) + NineString.GetByteCount(s.Uid)
            + NineString.GetByteCount(s.Gid) + NineString.GetByteCount(s.Muid);
        if (dialect != Dialect.Legacy)
        {
            n += 2 + NineString.GetByteCount(s.Extension) + 12;
        }
        return n;
    }
}

/// <summary>9P2000.L Treaddir entries: qid[13] offset[8] type[1] name[s].</summary>
public static class DirEntryCodec
{
    public static int SizeOf(in DirEntry e) => Qid.Size + 8 + 1 + 2 + NineString.GetByteCount(e.Name);

    public static void Write(ref WireWriter w, in DirEntry e)
    {
        w.Qid(e.Qid);
        w.U64(e.Offset);
        w.U8(e.Type);
        w.Str(e.Name);
    }

    /// <summary>Parses a whole Rreaddir data block; false if malformed.</summary>
    public static bool TryParse(ReadOnlySpan<byte> data, List<DirEntry> into)
    {
        var r = new WireReader(data);
        while (r.Ok && r.Remaining > 0)
        {
            Qid q = r.Qid();
            ulong off = r.U64();
            byte t = r.U8();
            string name = r.Str();
            if (r.Ok)
            {
                into.Add(new DirEntry(q, off, t, name));
            }
        }
        return r.Ok;
    }

    /// <summary>Parses a 9P2000/.u directory read block (packed stat records).</summary>
    public static bool TryParseStats(ReadOnlySpan<byte> data, Dialect dialect, List<Stat> into)
    {
        var r = new WireReader(data);
        while (r.Ok && r.Remaining > 0)
        {
            Stat s = StatCodec.Read(ref r, dialect);
            if (r.Ok)
            {
                into.Add(s);
            }
        }
        return r.Ok;
    }
}
