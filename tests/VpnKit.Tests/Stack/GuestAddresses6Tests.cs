using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Tests.Stack;

/// <summary>The table of guests' in-prefix IPv6 addresses that publishing opens to: preference, bounds, moves.</summary>
public sealed class GuestAddresses6Tests
{
    private static readonly UInt128 Prefix = Ip6.Parse("fd00:6b69:7400::");
    private static readonly MacAddress Mac = MacAddress.Parse("02:00:00:00:00:03");
    private static readonly MacAddress Other = MacAddress.Parse("02:00:00:00:00:04");
    /// <summary>The prefix and the modified EUI-64 of <see cref="Mac"/> (RFC 4291 App. A: U/L bit flipped, ff:fe inserted).</summary>
    private static readonly UInt128 Eui64 = Ip6.Parse("fd00:6b69:7400::ff:fe00:3");

    private readonly GuestAddresses6 _t = new(Prefix);

    [Fact]
    public void TheMostRecentlySeenAddressIsPreferredUnlessTheMacsEui64AddressIsKnown()
    {
        UInt128 a = Prefix | 0xA, b = Prefix | 0xB;
        Assert.False(_t.TryGetPreferred(Mac, out _));
        _t.Note(Mac, a, 0);
        _t.Note(Mac, b, 1_000);
        Assert.True(_t.TryGetPreferred(Mac, out UInt128 got));
        Assert.Equal(b, got);
        _t.Note(Mac, a, 5_000);
        Assert.True(_t.TryGetPreferred(Mac, out got));
        Assert.Equal(a, got);
        // The EUI-64 address is stable (never a temporary one, RFC 8981): it wins even when seen least recently.
        _t.Note(Mac, Eui64, 6_000);
        _t.Note(Mac, b, 9_000);
        Assert.True(_t.TryGetPreferred(Mac, out got));
        Assert.Equal(Eui64, got);
    }

    [Fact]
    public void AddressesOutsideThePrefixTheAnycastAddressAndBadMacsAreNotKept()
    {
        _t.Note(Mac, Ip6.Parse("2001:db8::5"), 0);
        _t.Note(Mac, Ip6.Parse("fe80::ff:fe00:3"), 0);
        _t.Note(Mac, Prefix, 0); // subnet-router anycast (RFC 4291 §2.6.1)
        _t.Note(MacAddress.Zero, Prefix | 5, 0);
        _t.Note(MacAddress.Broadcast, Prefix | 6, 0);
        Assert.Equal(0, _t.GuestCount);
        Assert.False(_t.TryGetPreferred(Mac, out _));
    }

    [Fact]
    public void EachGuestKeepsAFewAddressesTheOldestGoingFirstButNotItsEui64One()
    {
        _t.Note(Mac, Eui64, 0);
        for (int i = 1; i <= 100; i++)
        {
            _t.Note(Mac, Prefix | (UInt128)(0x1000 + i), i * 1_000); // temporary addresses, one after another
        }
        UInt128[] kept = _t.AddressesOf(Mac);
        Assert.Equal(GuestAddresses6.PerGuest, kept.Length);
        Assert.Contains(Eui64, kept);
        Assert.Contains(Prefix | 0x1000 + 100, kept);
        Assert.Contains(Prefix | 0x1000 + 98, kept);
        Assert.DoesNotContain(Prefix | 0x1000 + 97, kept);
    }

    [Fact]
    public void TheNumberOfGuestsIsBoundedTheLeastRecentlySeenGoingFirst()
    {
        for (int i = 0; i < 10_000; i++)
        {
            _t.Note(new MacAddress(0x0200_0000_0000UL + (ulong)i), Prefix | (UInt128)(0x10_0000 + i), i);
        }
        Assert.Equal(GuestAddresses6.MaxGuests, _t.GuestCount);
        Assert.True(_t.TryGetPreferred(new MacAddress(0x0200_0000_0000UL + 9_999), out _));
        Assert.False(_t.TryGetPreferred(new MacAddress(0x0200_0000_0000UL), out _));
    }

    [Fact]
    public void AnAddressHasOneHolderAndTheOnlyGuestIsFound()
    {
        UInt128 a = Prefix | 0xA;
        _t.Note(Mac, a, 0);
        Assert.True(_t.TryGetOnlyGuest(out MacAddress only));
        Assert.Equal(Mac, only);
        // The same address now from another MAC (a guest recreated with a new MAC): it moves.
        _t.Note(Other, a, 1);
        Assert.Empty(_t.AddressesOf(Mac));
        Assert.True(_t.TryGetMac(a, out MacAddress holder));
        Assert.Equal(Other, holder);
        _t.Note(Mac, Prefix | 0xB, 2);
        Assert.False(_t.TryGetOnlyGuest(out _));
    }
}
