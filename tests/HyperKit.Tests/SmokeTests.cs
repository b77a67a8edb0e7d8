namespace Kit.HyperKit.Tests;

public sealed class SmokeTests
{
    [Fact]
    public void AssemblyLoads() => Assert.Equal("Kit.HyperKit", typeof(Kit.HyperKit.AssemblyMarker).Assembly.GetName().Name);
}
