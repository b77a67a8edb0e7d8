namespace Kit.NineP.Tests;

public sealed class SmokeTests
{
    [Fact]
    public void AssemblyLoads() => Assert.Equal("Kit.NineP", typeof(Kit.NineP.AssemblyMarker).Assembly.GetName().Name);
}
