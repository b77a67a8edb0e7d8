using System.Reflection;

namespace Kit.Tests;

/// <summary>
/// design.md's dependency rules, checked on the built assemblies: the three parts never reference each other;
/// NineP and the Linux-interop leaf are the only projects they may share; only the CLI composes them.
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

        Assert.All(kitReferences, name => Assert.Contains(name, (string[])["Kit.NineP", "Kit.Linux"]));
    }

    [Fact]
    public void NinePReferencesNoPart()
    {
        Assembly assembly = Assembly.Load("Kit.NineP");
        Assert.All(assembly.GetReferencedAssemblies().Where(r => r.Name!.StartsWith("Kit.", StringComparison.Ordinal)),
            r => Assert.Equal("Kit.Linux", r.Name));
    }

    [Fact]
    public void LinuxLeafReferencesNothingOfKit()
    {
        Assembly assembly = Assembly.Load("Kit.Linux");
        Assert.DoesNotContain(assembly.GetReferencedAssemblies(), r => r.Name!.StartsWith("Kit.", StringComparison.Ordinal));
    }
}
