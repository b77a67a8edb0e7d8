using System.Text.RegularExpressions;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Vm;

/// <summary>
/// Issue 6's proof for virtio-vsock: inside the nested runner's L1, `kit vm run --vsock PATH` boots the default guest
/// with Debian's socat (copied with its shared libraries into the initramfs; busybox nc knows no AF_VSOCK). Real
/// clients on both ends, 1 MiB of random data each way on each connection:
/// <list type="bullet">
/// <item>host to guest: socat in L1 connects to PATH, writes <c>CONNECT 1234</c> and 1 MiB, and reads <c>OK port</c>
/// and the echo; in the guest socat's VSOCK-LISTEN:1234 runs <c>tee</c>, which keeps a copy and echoes;</item>
/// <item>guest to host: the guest's socat VSOCK-CONNECT:2:5000 sends 1 MiB to PATH_5000, where socat UNIX-LISTEN
/// runs <c>tee</c> the same way.</item>
/// </list>
/// The sha256 of what each side sent, what the far side received and what came back must all agree. Both
/// connections end by half-close (each sender shuts its write side first), so shutdown has to work both ways too.
/// </summary>
[Trait("Tier", "Real")]
public sealed partial class VmVsockTests(ITestOutputHelper output)
{
    private const string GuestScript = """
        export PATH=/kit/bin:$PATH
        # 1) host -> guest: one connection to port 1234; tee keeps a copy and echoes.
        socat -t 60 VSOCK-LISTEN:1234 EXEC:"tee /tmp/h-recv" &
        listener=$!
        echo VSOCK-LISTENING
        wait $listener
        echo "listener-exit=$?"
        echo "guest-got-from-host=$(sha256sum < /tmp/h-recv | cut -d' ' -f1)"
        # 2) guest -> host port 5000 (PATH_5000 on the host), echoed back.
        head -c 1048576 /dev/urandom > /tmp/g.bin
        socat -t 60 - VSOCK-CONNECT:2:5000 < /tmp/g.bin > /tmp/g.echo
        echo "connect-exit=$?"
        echo "guest-sent=$(sha256sum < /tmp/g.bin | cut -d' ' -f1)"
        echo "guest-echo=$(sha256sum < /tmp/g.echo | cut -d' ' -f1)"
        exit 0
        """;

    [Fact]
    public async Task Kit_vm_run_vsock_carries_a_mebibyte_each_way_in_both_directions_of_connection()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        GuestImage image = await GuestImage.GetDefaultAsync(cancel);
        string work = Path.Combine(RepoPaths.Root, "artifacts", "test-work", $"vm-vsock-{Environment.ProcessId}");
        Directory.CreateDirectory(work);
        try
        {
            string initrd = Path.Combine(work, "vsock.initrd");
            await image.WriteInitrdAsync(initrd, GuestScript, SocatFiles(), cancel);
            string kit = KitCli.ExecutablePath;
            string vm = Text.ShellJoin(
                [kit, "vm", "run", "--kernel", image.Kernel, "--initrd", initrd, "--memory", "512M",
                 "--cmdline", "console=ttyS0 reboot=k panic=-1 no_timer_check", "--vsock", "/tmp/vsock/v.sock"]);
            // In L1: the host's socat plays both host programs. The sockets live in L1's /tmp (a tmpfs): a Unix
            // socket bound on the 9p results share may not be found again by connect().
            string command = $$"""
                W={{work}}
                S=/tmp/vsock
                mkdir -p $S
                head -c 1048576 /dev/urandom > $W/h.bin
                socat -t 60 UNIX-LISTEN:$S/v.sock_5000 EXEC:"tee $W/g-recv" &
                echo_server=$!
                {{vm}} >$W/console 2>&1 &
                vm=$!
                ok=0
                for i in $(seq 1 240); do
                  if [ -S $S/v.sock ] && grep -q VSOCK-LISTENING $W/console; then
                    t0=$(date +%s%N)
                    { printf 'CONNECT 1234\n'; cat $W/h.bin; } | socat -t 60 - UNIX-CONNECT:$S/v.sock > $W/h.out
                    t1=$(date +%s%N)
                    if head -c 3 $W/h.out | grep -q '^OK '; then ok=1; echo "host-echo-ms=$(( (t1 - t0) / 1000000 ))"; break; fi
                  fi
                  kill -0 $vm 2>/dev/null || break
                  sleep 1
                done
                echo "host-connect-ok=$ok"
                head -n 1 $W/h.out | sed 's/^/host-ok-line=/'
                tail -c +$(( $(head -n 1 $W/h.out | wc -c) + 1 )) $W/h.out > $W/h.echo
                echo "host-sent=$(sha256sum < $W/h.bin | cut -d' ' -f1)"
                echo "host-echo=$(sha256sum < $W/h.echo | cut -d' ' -f1)"
                wait $vm
                echo "vm-exit=$?"
                wait $echo_server
                echo "host-got-from-guest=$(sha256sum < $W/g-recv | cut -d' ' -f1)"
                """;
            var options = new NestedOptions { ResultsDirectory = work, Timeout = TimeSpan.FromMinutes(15) };

            GuestResult l1 = await NestedRunner.RunAsync(command, options, cancel);

            string console = File.Exists(Path.Combine(work, "console")) ? File.ReadAllText(Path.Combine(work, "console")) : "(no console file)";
            output.WriteLine($"L1 boot {l1.BootTime.TotalSeconds:F1} s, total {l1.Elapsed.TotalSeconds:F1} s\n{l1.Output}");
            output.WriteLine($"--- guest console ---\n{Text.Tail(console, 6000)}");
            string all = l1.Output + "\n" + console;
            string Value(string key)
            {
                Match m = Regex.Match(all, $@"(?m)^{Regex.Escape(key)}=(\S*)");
                Assert.True(m.Success, $"no {key}= line\n{Text.Tail(l1.Output, 4000)}\n{Text.Tail(console, 4000)}");
                return m.Groups[1].Value;
            }

            Assert.Equal("1", Value("host-connect-ok"));
            Assert.Matches(@"^OK \d+$", Regex.Match(l1.Output, @"(?m)^host-ok-line=(.*)$").Groups[1].Value.Trim());
            Assert.Equal("0", Value("vm-exit"));
            Assert.Contains("KIT-GUEST-EXIT 0", console, StringComparison.Ordinal);
            // Host -> guest listener: what the host sent, what the guest got, what came back.
            string hostSent = Value("host-sent");
            Assert.Matches("^[0-9a-f]{64}$", hostSent);
            Assert.Equal(hostSent, Value("guest-got-from-host"));
            Assert.Equal(hostSent, Value("host-echo"));
            // Guest -> host listener: the same three.
            string guestSent = Value("guest-sent");
            Assert.Matches("^[0-9a-f]{64}$", guestSent);
            Assert.NotEqual(hostSent, guestSent);
            Assert.Equal(guestSent, Value("host-got-from-guest"));
            Assert.Equal(guestSent, Value("guest-echo"));
            Assert.Equal("0", Value("connect-exit"));
            Assert.Equal("0", Value("listener-exit"));
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    /// <summary>
    /// Debian's socat (VSOCK-LISTEN/VSOCK-CONNECT since 1.7.4) and every shared library ldd names, under /kit/lib,
    /// started through the dynamic loader so the guest needs no /lib layout; /kit/bin/socat is the wrapper.
    /// </summary>
    internal static Dictionary<string, byte[]> SocatFiles()
    {
        string socat = "/usr/bin/socat";
        Assert.True(File.Exists(socat), "socat is missing (./test installs it)");
        string ldd = ProcessRunner.Run("ldd", [socat]).EnsureSuccess().StandardOutput;
        var files = new Dictionary<string, byte[]> { ["kit/lib/socat"] = File.ReadAllBytes(socat) };
        string? loader = null;
        foreach (Match m in LibraryPath().Matches(ldd))
        {
            string path = m.Groups[1].Value;
            string name = Path.GetFileName(path);
            files[$"kit/lib/{name}"] = File.ReadAllBytes(path); // follows symlinks to the real file
            if (name.StartsWith("ld-linux", StringComparison.Ordinal))
            {
                loader = name;
            }
        }
        Assert.NotNull(loader);
        files["kit/bin/socat"] = System.Text.Encoding.ASCII.GetBytes(
            $"#!/bin/sh\nexec /kit/lib/{loader} --library-path /kit/lib /kit/lib/socat \"$@\"\n");
        return files;
    }

    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and "/lib64/ld-linux-x86-64.so.2 (0x...)"
    [GeneratedRegex(@"(?m)(/\S+) \(0x[0-9a-f]+\)")]
    private static partial Regex LibraryPath();
}
