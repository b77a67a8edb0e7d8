using Kit.Testing;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>`kit net run` for the VPNKit real-client tests: the prerequisites and a bounded run of a shell script.</summary>
internal static class NetRun
{
    /// <summary>Checks what these tests need (./test installs it); a missing piece fails loudly rather than skipping.</summary>
    public static void RequirePrerequisites()
    {
        Assert.True(Environment.UserName == "root" || File.ReadAllText("/proc/self/status").Contains("Uid:\t0\t", StringComparison.Ordinal),
            "kit net run tests need root (network namespaces and TAP)");
        foreach (string tool in new[] { "/usr/sbin/ip", "/usr/bin/busybox" })
        {
            Assert.True(File.Exists(tool) || File.Exists(tool.Replace("/usr", "", StringComparison.Ordinal)), $"{tool} is missing (./test installs it)");
        }
    }

    /// <summary>Runs `kit net run OPTIONS -- sh -c SCRIPT` and waits (bounded; a timeout kills it).</summary>
    public static Task<ProcessResult> RunAsync(string[] options, string script, TimeSpan timeout) =>
        ProcessRunner.RunAsync(KitCli.ExecutablePath, ["net", "run", .. options, "--", "sh", "-c", script], timeout);

    /// <summary>A failure message: the command, how it ended, and its output.</summary>
    public static string Describe(ProcessResult r) => $"{r}\n--- output\n{r.Output}";

    /// <summary>
    /// Shell that waits (bounded: 10 s) until eth0 has a global address in <paramref name="prefix"/> (the gateway's by
    /// default) that is no longer tentative (SLAAC and DAD done), so what follows leaves from it.
    /// </summary>
    public static string WaitForSlaac(string prefix = "fd00:6b69:7400:") =>
        $"for i in $(seq 1 100); do ip -6 addr show dev eth0 scope global | grep -q '{prefix}' && "
        + "! ip -6 addr show dev eth0 scope global | grep -q tentative && break; sleep 0.1; done; ";
}
