using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.NineP.Vfs;

namespace Kit.NineP.Tests;

/// <summary>The rules every 9P backend shares: names, fids, Tversion.</summary>
public sealed class SharedRulesTests
{
    [Theory]
    [InlineData("", Errno.EINVAL)]
    [InlineData(".", Errno.EINVAL)]
    [InlineData("..", Errno.EINVAL)]
    [InlineData("a/b", Errno.EINVAL)]
    [InlineData("a\0b", Errno.EINVAL)]
    [InlineData("ok", 0u)]
    [InlineData("f\uDCFFo", 0u)]
    public void Entry_names(string name, uint errno) => Assert.Equal(errno, NameRules.EntryError(name)?.Errno ?? 0);

    [Theory]
    [InlineData("", Errno.EINVAL)]
    [InlineData(".", Errno.EINVAL)]
    [InlineData("..", 0u)]
    [InlineData("a/b", Errno.EINVAL)]
    [InlineData("a\0b", Errno.EINVAL)]
    [InlineData("ok", 0u)]
    public void Walk_names(string name, uint errno) => Assert.Equal(errno, NameRules.WalkError(name)?.Errno ?? 0);

    [Fact]
    public void Names_are_at_most_255_bytes_counted_as_sent()
    {
        Assert.Null(NameRules.EntryError(new string('a', 255)));
        Assert.Equal(Errno.ENAMETOOLONG, NameRules.EntryError(new string('a', 256))!.Errno);
        Assert.Equal(Errno.ENAMETOOLONG, NameRules.WalkError(new string('\u00e9', 128))!.Errno); // 256 bytes
        Assert.Null(NameRules.WalkError(new string('\uDCFF', 255))); // 255 escaped bytes
        Assert.Equal(Errno.EINVAL, NameRules.TextError("f\uDCFFo")!.Errno);
        Assert.Null(NameRules.TextError("caf\u00e9"));
    }

    [Fact]
    public void The_fid_table_is_bounded_and_refuses_NOFID_and_fids_in_use()
    {
        var fids = new FidTable<object>(2);
        fids.Add(1, "a");
        Assert.Equal(Errno.EBADF, Assert.Throws<VfsException>(() => fids.Add(1, "b")).Errno);
        Assert.Equal(Errno.EBADF, Assert.Throws<VfsException>(() => fids.Add(P9.NoFid, "b")).Errno);
        fids.Add(2, "b");
        Assert.Equal(Errno.EMFILE, Assert.Throws<VfsException>(() => fids.Add(3, "c")).Errno);
        Assert.Equal("a", fids.Remove(1));
        Assert.Equal(Errno.EBADF, Assert.Throws<VfsException>(() => fids.Get(1)).Errno);
        fids.Add(3, "c");
        Assert.Equal(2, fids.RemoveAll().Length);
        Assert.Equal(0, fids.Count);
    }

    [Theory]
    [InlineData("9P2000.L", 8192, false, true, Dialect.Linux, "9P2000.L", 8192)]
    [InlineData("9P2000.L.x", 1 << 30, false, true, Dialect.Linux, "9P2000.L", 65536)]
    [InlineData("9P2000.u", 8192, false, true, Dialect.Unix, "9P2000.u", 8192)]
    [InlineData("9P2000", 8192, false, true, Dialect.Legacy, "9P2000", 8192)]
    [InlineData("9P2000.Lx", 8192, false, true, Dialect.Legacy, "9P2000", 8192)]
    [InlineData("9P2000.u", 8192, true, false, Dialect.Legacy, "unknown", 8192)]
    [InlineData("9P2000", 8192, true, false, Dialect.Legacy, "unknown", 8192)]
    [InlineData("9P1", 8192, false, false, Dialect.Legacy, "unknown", 8192)]
    [InlineData("9P2000.L", 4095, false, false, Dialect.Legacy, "unknown", 4095)]
    public void Version_negotiation(string version, uint msize, bool linuxOnly, bool accepted, Dialect dialect, string reply, uint replyMsize)
    {
        Negotiated n = VersionNegotiation.Negotiate(version, msize, 65536, 4096, linuxOnly);
        Assert.Equal(accepted, n.Accepted);
        Assert.Equal(reply, n.Version);
        Assert.Equal(replyMsize, n.Msize);
        if (accepted)
        {
            Assert.Equal(dialect, n.Dialect);
        }
    }
}
