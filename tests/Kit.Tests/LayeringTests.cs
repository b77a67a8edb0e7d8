using System.Reflection;

namespace Kit.Tests;

/// <summary>
/// design.md's dependency rules, checked on the built assemblies: the three parts never reference each other;
/// NineP is the only part they may share; only the CLI composes them.
/// </summary>
public sealed class LayeringTests
{
    private static readonly string[] s_parts = ["Kit.VpnKit", "Kit.DataKit", "Kit.HyperKit"];

    public static TheoryData<string> Parts => new(s_parts);

    [Theory]
    [MemberData(nameof(Parts))]
    public void PartReferencesNoOtherPart(string part)
    {
        Assembly assembly = Assembly.Load(part);
        string[] kitReferences = assembly.GetReferencedAssemblies()
            .Select(r => r.Name!)
            .Where(n => n.StartsWith("Kit.", StringComparison.Ordinal))
            .ToArray();

        Assert.All(kitReferences, name => Assert.Equal("Kit.NineP", name));
    }

    [Fact]
    public void NinePReferencesNoPart()
    {
        Assembly assembly = Assembly.Load("Kit.NineP");
        Assert.DoesNotContain(assembly.GetReferencedAssemblies(), r => r.Name!.StartsWith("Kit.", StringComparison.Ordinal));
    }
}
