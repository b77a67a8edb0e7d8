namespace Kit.VpnKit.Tests;

public sealed class SmokeTests
{
    [Fact]
    public void AssemblyLoads() => Assert.Equal("Kit.VpnKit", typeof(Kit.VpnKit.AssemblyMarker).Assembly.GetName().Name);
}
