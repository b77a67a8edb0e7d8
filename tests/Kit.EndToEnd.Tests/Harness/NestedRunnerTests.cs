using Kit.Testing;

namespace Kit.EndToEnd.Tests.Harness;

/// <summary>
/// The nested runner gives a host .NET program a working /dev/kvm: Kit.KvmProbe (the built dll, run by the host's
/// dotnet inside the chroot) creates a VM and a vCPU in the L1 guest and reports the API version.
/// </summary>
[Trait("Tier", "Real")]
public sealed class NestedRunnerTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Kvm_probe_creates_a_vm_and_vcpu_inside_the_nested_guest()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string probe = Path.Combine(RepoPaths.BuildOutput("Kit.KvmProbe"), "Kit.KvmProbe.dll");
        DirectoryInfo results = Directory.CreateTempSubdirectory("kit-nested-");
        DirectoryInfo exposed = Directory.CreateTempSubdirectory("kit-exposed-");
        try
        {
            // /tmp is a fresh tmpfs inside L1; an exposed host directory under it stays visible.
            await File.WriteAllTextAsync(Path.Combine(exposed.FullName, "marker"), "visible-in-l1\n", cancel);
            var options = new NestedOptions { ResultsDirectory = results.FullName };
            options.ExposedPaths.Add(exposed.FullName);
            string command = $"""
                ms() {"{"} echo $(( $(date +%s%N) / 1000000 )); {"}"}
                t0=$(ms)
                dotnet --list-runtimes >/dev/null
                t1=$(ms)
                {NestedRunner.DotnetCommand(probe)} >{results.FullName}/probe.txt
                rc=$?
                t2=$(ms)
                echo "dotnet-list-runtimes-ms=$((t1 - t0)) probe-ms=$((t2 - t1))"
                ls -l /dev/kvm
                cat {exposed.FullName}/marker
                exit $rc
                """;

            GuestResult result = await NestedRunner.RunAsync(command, options, cancel);

            output.WriteLine($"L1 boot to marker {result.BootTime.TotalSeconds:F1} s, total {result.Elapsed.TotalSeconds:F1} s");
            output.WriteLine(result.Output);
            Assert.True(result.ExitCode == 0, $"probe failed in L1 (exit {result.ExitCode})\n{result.Serial}");
            Assert.Contains("/dev/kvm", result.Output, StringComparison.Ordinal);
            Assert.Contains("visible-in-l1", result.Output, StringComparison.Ordinal);
            // Written through the read-write results share, read back on the host.
            Assert.Equal("api=12 vm=ok vcpu=ok", File.ReadAllText(Path.Combine(results.FullName, "probe.txt")).Trim());
        }
        finally
        {
            results.Delete(recursive: true);
            exposed.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task Kvm_probe_on_this_host_reports_a_clear_result()
    {
        // The host has no /dev/kvm (or PVM's): the probe must say so in one line, not crash.
        string probe = Path.Combine(RepoPaths.BuildOutput("Kit.KvmProbe"), "Kit.KvmProbe.dll");
        ProcessResult result = await ProcessRunner.RunAsync(
            Path.Combine(NestedRunner.DotnetRoot, "dotnet"), [probe], cancellationToken: TestContext.Current.CancellationToken);

        if (result.ExitCode == 0)
        {
            Assert.Equal("api=12 vm=ok vcpu=ok", result.StandardOutput.Trim());
        }
        else
        {
            Assert.Equal(1, result.ExitCode);
            Assert.StartsWith("kvm-probe: ", result.StandardError, StringComparison.Ordinal);
            Assert.DoesNotContain("   at ", result.StandardError, StringComparison.Ordinal);
        }
    }
}
