using System.Xml.Linq;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Kvm;

/// <summary>
/// The KVM tier (tests marked <c>Tier=Kvm</c>, which need a <c>/dev/kvm</c> with hardware virtualization) run
/// inside the nested runner's L1 guest, where QEMU TCG emulates AMD SVM (testing-here.md section 2). Their result
/// file goes to <c>$KIT_TEST_RESULTS/nested/</c>, which ./test adds to its totals; this test fails unless the
/// inner suite ran tests and all of them passed.
/// </summary>
[Trait("Tier", "Real")]
public sealed class NestedKvmTierTests(ITestOutputHelper output)
{
    [Theory]
    [InlineData("HyperKit.Tests", "Kit.HyperKit.Tests")]
    public async Task Kvm_tier_passes_inside_the_nested_guest(string project, string assembly)
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string resultsRoot = Environment.GetEnvironmentVariable("KIT_TEST_RESULTS") is { Length: > 0 } r
            ? r
            : Path.Combine(RepoPaths.Root, "artifacts", "test-results");
        string nested = Path.Combine(resultsRoot, "nested");
        Directory.CreateDirectory(nested);
        string xml = Path.Combine(nested, $"{assembly}.Kvm.xml");
        File.Delete(xml);

        string dll = Path.Combine(RepoPaths.BuildOutput(project), $"{assembly}.dll");
        string command = NestedRunner.DotnetCommand(dll, "-trait", "Tier=Kvm", "-noColor", "-noLogo", "-result-xml", xml);
        var options = new NestedOptions { ResultsDirectory = nested, Timeout = TimeSpan.FromMinutes(12) };

        GuestResult result = await NestedRunner.RunAsync(command, options, cancel);

        output.WriteLine($"L1 boot {result.BootTime.TotalSeconds:F1} s, total {result.Elapsed.TotalSeconds:F1} s");
        output.WriteLine(result.Output);
        Assert.True(File.Exists(xml), $"the nested suite wrote no results (exit {result.ExitCode})\n{result.Serial}");
        XElement summary = XDocument.Load(xml).Root!.Element("assembly")!;
        int total = (int)summary.Attribute("total")!;
        int failed = (int)summary.Attribute("failed")! + (int)summary.Attribute("errors")!;
        Assert.True(total > 0, "the nested suite found no Tier=Kvm tests");
        Assert.True(failed == 0 && result.ExitCode == 0, $"{failed} of {total} KVM-tier tests failed in L1\n{result.Output}");
    }
}
