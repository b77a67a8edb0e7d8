using CsCheck;
using Kit.NineP.Protocol;

namespace Kit.NineP.Tests;

public sealed class CodecTests
{
    private static byte[] Encode(Fcall f, Dialect d)
    {
        byte[] buffer = new byte[65536];
        int n = FcallCodec.Encode(f, d, buffer);
        Assert.True(n > 0);
        return buffer[..n];
    }

    private static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));

    // Byte layouts from intro(5)/version(5): size[4] Tversion tag[2] msize[4] version[s], little-endian.
    [Fact]
    public void TversionGoldenBytes()
    {
        byte[] bytes = Encode(new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = 8192, Version = "9P2000.L" }, Dialect.Legacy);
        Assert.Equal(Hex("15000000 64 ffff 00200000 0800 395032303030 2e4c"), bytes);
    }

    // walk(5): size[4] Twalk tag[2] fid[4] newfid[4] nwname[2] nwname*(wname[s]).
    [Fact]
    public void TwalkGoldenBytes()
    {
        byte[] bytes = Encode(new Fcall { Type = MessageType.Twalk, Tag = 1, Fid = 1, NewFid = 2, Wnames = ["branch", "master"] }, Dialect.Unix);
        Assert.Equal(Hex("21000000 6e 0100 01000000 02000000 0200 0600 6272616e6368 0600 6d6173746572"), bytes);
    }

    // 9P2000.u Rerror: ename[s] errno[4].
    [Fact]
    public void RerrorUnixCarriesErrno()
    {
        byte[] bytes = Encode(new Fcall { Type = MessageType.Rerror, Tag = 5, Ename = "No such file or directory", Errno = 2 }, Dialect.Unix);
        Assert.Equal(Hex("26000000 6b 0500 1900") .Concat("No such file or directory"u8.ToArray()).Concat(Hex("02000000")).ToArray(), bytes);
        byte[] legacy = Encode(new Fcall { Type = MessageType.Rerror, Tag = 5, Ename = "x" }, Dialect.Legacy);
        Assert.Equal(Hex("0a000000 6b 0500 0100 78"), legacy);
    }

    // 9P2000.L Rlerror: ecode[4]; Tgetattr fid[4] request_mask[8].
    [Fact]
    public void LinuxGoldenBytes()
    {
        Assert.Equal(Hex("0b000000 07 0900 11000000"), Encode(new Fcall { Type = MessageType.Rlerror, Tag = 9, Errno = 17 }, Dialect.Linux));
        Assert.Equal(Hex("13000000 18 0200 03000000 ff07000000000000"), Encode(new Fcall { Type = MessageType.Tgetattr, Tag = 2, Fid = 3, RequestMask = 0x7ff }, Dialect.Linux));
        Assert.Equal(Hex("17000000 28 0300 04000000 0000000000000000 00100000"), Encode(new Fcall { Type = MessageType.Treaddir, Tag = 3, Fid = 4, Count = 4096 }, Dialect.Linux));
    }

    // Rread: count[4] data[count]; qid is type[1] version[4] path[8].
    [Fact]
    public void RreadAndRattachGoldenBytes()
    {
        Assert.Equal(Hex("0e000000 75 0100 03000000 616263"), Encode(new Fcall { Type = MessageType.Rread, Tag = 1, Data = "abc"u8.ToArray() }, Dialect.Legacy));
        Assert.Equal(Hex("14000000 69 0100 80 01000000 0200000000000000"), Encode(new Fcall { Type = MessageType.Rattach, Tag = 1, Qid = new Qid(0x80, 1, 2) }, Dialect.Legacy));
    }

    // stat(5): Rstat is n[2] then the stat, itself prefixed by size[2]; .u appends extension[s] n_uid n_gid n_muid.
    [Fact]
    public void StatRoundTripsInBothDialects()
    {
        var stat = new Stat { Qid = new Qid(0, 0, 7), Mode = 0x1B4, Length = 15, Name = "Makefile", Uid = "root", Gid = "root", Muid = "none", Extension = "" };
        foreach (Dialect d in new[] { Dialect.Legacy, Dialect.Unix })
        {
            byte[] bytes = Encode(new Fcall { Type = MessageType.Rstat, Tag = 4, Stat = stat }, d);
            Assert.True(FcallCodec.TryDecode(bytes, d, out Fcall back, out string reason), reason);
            Assert.Equal(stat, back.Stat);
            Assert.Equal(StatCodec.SizeOf(stat, d) + 2 + 7, bytes.Length);
        }
    }

    public static TheoryData<Fcall> Samples() =>
    [
        new Fcall { Type = MessageType.Tattach, Tag = 1, Fid = 0, Afid = P9.NoFid, Uname = "u", Aname = "", NUname = 0 },
        new Fcall { Type = MessageType.Tcreate, Tag = 2, Fid = 3, Name = "link", Perm = P9.DmSymlink | 0x1FF, Mode = 1, Extension = "target" },
        new Fcall { Type = MessageType.Twrite, Tag = 3, Fid = 3, Offset = 10, Data = new byte[] { 1, 2, 3 } },
        new Fcall { Type = MessageType.Tlcreate, Tag = 4, Fid = 3, Name = "f", Flags = 0x42, LMode = 0x1A4, Gid = 0 },
        new Fcall { Type = MessageType.Trenameat, Tag = 5, Fid = 1, Name = "a", DFid = 1, Name2 = "b" },
        new Fcall { Type = MessageType.Tunlinkat, Tag = 6, Fid = 1, Name = "a", Flags = P9.AtRemoveDir },
        new Fcall { Type = MessageType.Tflush, Tag = 7, OldTag = 6 },
        new Fcall { Type = MessageType.Tlock, Tag = 8, Fid = 1, LockType = 1, Flags = 0, LockStart = 0, LockLength = 10, ProcId = 42, ClientId = "host" },
    ];

    [Theory]
    [MemberData(nameof(Samples))]
    public void EncodeDecodeRoundTrips(Fcall f)
    {
        Dialect d = f.Type is MessageType.Tlcreate or MessageType.Trenameat or MessageType.Tunlinkat or MessageType.Tlock ? Dialect.Linux : Dialect.Unix;
        byte[] bytes = Encode(f, d);
        Assert.True(FcallCodec.TryDecode(bytes, d, out Fcall back, out string reason), reason);
        Assert.Equal(bytes, Encode(back, d));
    }

    [Fact]
    public void RandomWalksRoundTrip()
    {
        Gen.String[Gen.Char.AlphaNumeric, 1, 20].Array[0, 16].Sample(names =>
        {
            var f = new Fcall { Type = MessageType.Twalk, Tag = 9, Fid = 1, NewFid = 2, Wnames = names };
            byte[] bytes = Encode(f, Dialect.Unix);
            Assert.True(FcallCodec.TryDecode(bytes, Dialect.Unix, out Fcall back, out _));
            Assert.Equal(names, back.Wnames);
        });
    }

    [Fact]
    public void ArbitraryBytesNeverThrow()
    {
        Gen.Byte.Array[0, 300].Sample(bytes =>
        {
            foreach (Dialect d in new[] { Dialect.Legacy, Dialect.Unix, Dialect.Linux })
            {
                _ = FcallCodec.TryDecode(bytes, d, out _, out _);
            }
        }, iter: 20000);
    }

    [Fact]
    public void ArbitraryBodiesOfEveryTypeNeverThrow()
    {
        byte[] types = Enum.GetValues<MessageType>().Select(t => (byte)t).ToArray();
        Gen.Select(Gen.Int[0, types.Length - 1].Select(i => types[i]), Gen.Byte.Array[0, 120]).Sample((type, body) =>
        {
            byte[] frame = new byte[7 + body.Length];
            BitConverter.TryWriteBytes(frame, (uint)frame.Length);
            frame[4] = type;
            body.CopyTo(frame, 7);
            foreach (Dialect d in new[] { Dialect.Legacy, Dialect.Unix, Dialect.Linux })
            {
                _ = FcallCodec.TryDecode(frame, d, out _, out _);
            }
        }, iter: 20000);
    }

    [Fact]
    public void TruncationsOfValidFramesAreRejected()
    {
        byte[] bytes = Encode(new Fcall { Type = MessageType.Twalk, Tag = 1, Fid = 1, NewFid = 2, Wnames = ["a", "bc"] }, Dialect.Unix);
        for (int n = 0; n < bytes.Length; n++)
        {
            byte[] cut = bytes[..n];
            if (n >= 4)
            {
                BitConverter.TryWriteBytes(cut, (uint)n);
            }
            Assert.False(FcallCodec.TryDecode(cut, Dialect.Unix, out _, out _));
        }
    }

    [Fact]
    public void OversizedCountsAreRejectedBeforeAllocation()
    {
        // Twrite claiming 4 GiB of data in a 23-byte frame.
        byte[] frame = Hex("17000000 76 0100 01000000 0000000000000000 ffffffff");
        Assert.False(FcallCodec.TryDecode(frame, Dialect.Unix, out _, out string reason));
        Assert.Contains("exceeds", reason, StringComparison.Ordinal);
        // Twalk with 17 names.
        byte[] walk = Hex("11000000 6e 0100 01000000 02000000 1100");
        Assert.False(FcallCodec.TryDecode(walk, Dialect.Unix, out _, out _));
    }

    [Fact]
    public void NamesThatAreNotUtf8RoundTripByteForByte()
    {
        // Twalk fid=1 newfid=2 of one name, the three bytes 'f' 0xff 'o' (a legal Linux file name).
        byte[] frame = Hex("16000000 6e 0100 01000000 02000000 0100 0300 66ff6f");
        Assert.True(FcallCodec.TryDecode(frame, Dialect.Linux, out Fcall walk, out string why), why);
        Assert.Equal("f\uDCFFo", Assert.Single(walk.Wnames));
        byte[] again = new byte[frame.Length];
        Assert.Equal(frame.Length, FcallCodec.Encode(walk, Dialect.Linux, again));
        Assert.Equal(frame, again);
    }

    [Theory]
    [InlineData("")]
    [InlineData("66ff6f")]
    [InlineData("c3a9")]             // é, valid
    [InlineData("c3")]               // truncated sequence
    [InlineData("eda080")]           // an encoded surrogate: not UTF-8
    [InlineData("f09f9880ff80")]     // a 4-byte rune, then junk
    [InlineData("efbfbd")]           // U+FFFD itself stays U+FFFD
    public void NineStringIsLossless(string hex)
    {
        byte[] bytes = Convert.FromHexString(hex);
        string s = NineString.Decode(bytes);
        byte[] back = new byte[NineString.GetByteCount(s)];
        NineString.GetBytes(s, back);
        Assert.Equal(bytes, back);
        Assert.Equal(System.Text.Unicode.Utf8.IsValid(bytes), NineString.IsText(s));
    }
}
