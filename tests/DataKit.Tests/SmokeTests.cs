namespace Kit.DataKit.Tests;

public sealed class SmokeTests
{
    [Fact]
    public void AssemblyLoads() => Assert.Equal("Kit.DataKit", typeof(Kit.DataKit.AssemblyMarker).Assembly.GetName().Name);
}
