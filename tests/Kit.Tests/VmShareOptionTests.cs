using Kit.Cli;
using Kit.Cli.Commands;
using Kit.HyperKit.Devices.Virtio.NineP;
using Kit.HyperKit.Vm;

namespace Kit.Tests;

/// <summary>`kit vm run --share` parsing and the device it builds (no KVM needed).</summary>
public sealed class VmShareOptionTests
{
    [Theory]
    [InlineData("host=/srv/x", "host", "/srv/x", false, false)]
    [InlineData("ro=/srv/x,ro", "ro", "/srv/x", true, false)]
    [InlineData("t=/srv/x,trusted", "t", "/srv/x", false, true)]
    [InlineData("t=/srv/x,ro,trusted", "t", "/srv/x", true, true)]
    [InlineData("t=/srv/x,trusted,ro", "t", "/srv/x", true, true)]
    [InlineData("data=tcp://127.0.0.1:5640", "data", "tcp://127.0.0.1:5640", false, false)]
    [InlineData("db=unix:/run/db.sock", "db", "unix:/run/db.sock", false, false)]
    public void Share_options_parse(string text, string tag, string target, bool readOnly, bool trusted)
    {
        ShareOptions share = VmCommand.ParseShare(text);
        Assert.Equal(new ShareOptions(tag, target, readOnly, trusted), share);
    }

    [Theory]
    [InlineData("nodir")]
    [InlineData("=/srv")]
    [InlineData("tag=")]
    [InlineData("bad tag=/srv")]
    [InlineData("a/b=/srv")]
    public void Bad_share_options_are_one_line_errors(string text) =>
        Assert.Contains("--share", Assert.Throws<CliException>(() => VmCommand.ParseShare(text)).Message, StringComparison.Ordinal);

    [Fact]
    public void Shares_build_devices_or_say_what_is_wrong()
    {
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-share-");
        try
        {
            using VirtioNineP device = NinePShares.Create("host", dir.FullName, readOnly: true);
            Assert.Equal("host", device.Tag);
            using VirtioNineP relay = NinePShares.Create("data", "tcp://127.0.0.1:5640", readOnly: false);
            Assert.Contains("not a directory", Assert.Throws<ArgumentException>(() => NinePShares.Create("x", Path.Combine(dir.FullName, "missing"), false)).Message, StringComparison.Ordinal);
            // The port defaults to 9P's 5640, where kit data serve listens by default (one parser for both sides).
            using VirtioNineP defaultPort = NinePShares.Create("data", "tcp://127.0.0.1", readOnly: false);
            Assert.Throws<ArgumentException>(() => NinePShares.Create("x", "tcp://no host:5640", false));
            Assert.Throws<ArgumentException>(() => NinePShares.Create("x", "tcp://127.0.0.1:0", false));
            Assert.Throws<ArgumentException>(() => NinePShares.Create("x", "tcp://127.0.0.1:5640", true));
        }
        finally
        {
            dir.Delete();
        }
    }
}
