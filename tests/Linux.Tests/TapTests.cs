namespace Kit.Linux.Tests;

/// <summary>
/// Opening TAP devices. A device is made in this process's network namespace, as the TAP backend test does before it
/// moves its device away; here it is never given an address or brought up, so nothing is sent, and being
/// non-persistent it is gone when closed.
/// </summary>
[Trait("Tier", "Real")]
public sealed class TapTests
{
    [Fact]
    public void Rejects_bad_arguments_before_touching_the_device()
    {
        Assert.Throws<ArgumentException>(() => Tap.Open("a-name-too-long-x", 0, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => Tap.Open("kitx", 11, out _));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(Tap.LegacyVirtioHeader)]
    [InlineData(Tap.VirtioHeaderV1)]
    public void Opens_a_tap_the_kernel_names_and_removes_it_on_close(int header)
    {
        // ./test runs as root, and kit net run's tiers need /dev/net/tun as well: neither is optional here.
        Assert.True(Environment.IsPrivilegedProcess && File.Exists("/dev/net/tun"), "creating a TAP needs root and /dev/net/tun (./test runs as root)");
        string actual;
        using (Tap.Open("", header, out actual))
        {
            Assert.StartsWith("tap", actual);
            Assert.True(Directory.Exists($"/sys/class/net/{actual}"));
            // IFF_VNET_HDR shows in the device's flags (tun_flags, hex): 0x4000 with a header, absent without.
            int flags = Convert.ToInt32(File.ReadAllText($"/sys/class/net/{actual}/tun_flags").Trim(), 16);
            Assert.Equal(header > 0, (flags & 0x4000) != 0);
            Assert.Equal(0x1002, flags & 0x1002); // IFF_TAP | IFF_NO_PI
        }
        Assert.False(Directory.Exists($"/sys/class/net/{actual}"));
    }
}
