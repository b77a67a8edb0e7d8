using Kit.Testing;

namespace Kit.EndToEnd.Tests.Harness;

[Trait("Tier", "Real")]
public sealed class NetNamespaceTests
{
    [Fact]
    public async Task New_namespace_has_only_loopback_and_is_gone_after_dispose()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string name;
        using (NetNamespace ns = NetNamespace.Create())
        {
            name = ns.Name;
            Assert.True(NetNamespace.Exists(name));

            ProcessResult links = (await ns.RunAsync("ip", ["-o", "link", "show"], cancellationToken: cancel)).EnsureSuccess();
            ProcessResult addrs = (await ns.RunAsync("ip", ["-o", "addr", "show"], cancellationToken: cancel)).EnsureSuccess();
            ProcessResult hostLinks = (await ProcessRunner.RunAsync("ip", ["-o", "link", "show"], cancellationToken: cancel)).EnsureSuccess();

            string[] nsLinks = links.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(nsLinks);
            Assert.Contains(": lo: ", nsLinks[0], StringComparison.Ordinal);
            Assert.DoesNotContain("inet", addrs.StandardOutput, StringComparison.Ordinal); // lo starts down
            Assert.True(hostLinks.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length > 1,
                "the host should have more interfaces than the namespace");

            // Something we start inside shares the namespace and sees the loopback we bring up.
            ProcessResult up = (await ns.ShellAsync("ip link set lo up && ip -o -4 addr show dev lo", cancellationToken: cancel)).EnsureSuccess();
            Assert.Contains("inet 127.0.0.1/8", up.StandardOutput, StringComparison.Ordinal);
        }
        Assert.False(NetNamespace.Exists(name));
        ProcessResult list = await ProcessRunner.RunAsync("ip", ["netns", "list"], cancellationToken: cancel);
        Assert.DoesNotContain(name, list.StandardOutput, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Namespace_and_its_processes_are_removed_when_the_body_throws()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        string? name = null;
        int sleeper = 0;

        await Assert.ThrowsAsync<InvalidOperationException>(async () =>
        {
            using NetNamespace ns = NetNamespace.Create();
            name = ns.Name;
            RunningProcess sleep = ns.Start("sleep", ["600"]);
            sleeper = sleep.Id;
            // `ip netns exec` enters the namespace just after it starts; wait until the kernel lists it there.
            string inside = "";
            for (int i = 0; i < 100 && inside.Length == 0; i++)
            {
                inside = (await ProcessRunner.RunAsync("ip", ["netns", "pids", ns.Name], cancellationToken: cancel)).StandardOutput.Trim();
                if (inside.Length == 0)
                {
                    await Task.Delay(50, cancel);
                }
            }
            Assert.Contains(sleeper.ToString(System.Globalization.CultureInfo.InvariantCulture), inside.Split('\n'));
            throw new InvalidOperationException("test body failed");
        });

        Assert.NotNull(name);
        Assert.False(NetNamespace.Exists(name));
        // Give the kernel a moment to reap the killed process's /proc entry.
        for (int i = 0; i < 50 && IsRunning(sleeper); i++)
        {
            await Task.Delay(100, cancel);
        }
        Assert.False(IsRunning(sleeper), "a process inside the namespace survived its teardown");
    }

    private static bool IsRunning(int pid)
    {
        try
        {
            // A killed child of ours stays a zombie ('Z') until reaped; that is not running.
            string stat = File.ReadAllText($"/proc/{pid}/stat");
            return !stat[(stat.LastIndexOf(')') + 2)..].StartsWith('Z');
        }
        catch (IOException)
        {
            return false;
        }
    }
}
