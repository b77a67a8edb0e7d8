using Kit.HyperKit.Kvm;

namespace Kit.HyperKit.Tests;

public sealed class HostRandomTests
{
    [Fact]
    public void FillsLargeBuffersCompletelyWithFreshBytes()
    {
        // getrandom(2) may return fewer bytes than asked above 256 bytes; the loop must fill everything.
        byte[] a = new byte[100_000], b = new byte[100_000];
        HostRandom.Fill(a);
        HostRandom.Fill(b);
        Assert.NotEqual(a, b);
        // Every 4 KiB block got bytes (a block of 4096 zeros from a CSPRNG does not happen).
        for (int i = 0; i < a.Length; i += 4096)
        {
            Assert.Contains(a.AsSpan(i, Math.Min(4096, a.Length - i)).ToArray(), x => x != 0);
        }
    }

    [Fact]
    public void AnEmptyBufferIsFine() => HostRandom.Fill([]);
}
