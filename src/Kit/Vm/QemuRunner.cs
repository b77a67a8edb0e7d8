using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Kit.Cli.Commands;
using Kit.HyperKit.Devices.Virtio.Net;
using Kit.HyperKit.Devices.Virtio.Vsock;
using Kit.HyperKit.VhostUser;
using Kit.HyperKit.Vm;
using Kit.Linux;
using Microsoft.Extensions.Logging;

namespace Kit.Cli.Vm;

/// <summary>
/// <c>--accel tcg</c>: the guest runs on QEMU's software CPU, started and supervised by kit as its child, while the
/// network and vsock devices stay Kit's own (VirtioNet with its VPNKit, VMN3T or TAP backend; VirtioVsock with the
/// Unix-socket host), served to QEMU over vhost-user (sockets in a private directory, unlinked once QEMU connects;
/// QMP on a socketpair). The console passes through kit (for the panic watcher and --console-log); QMP says how the
/// guest ended.
/// </summary>
internal static class QemuRunner
{
    public static MachineExit Run(VmSpec spec, Action<ReadOnlySpan<byte>> console, INetBackend? net, ILoggerFactory? logs)
    {
        string qemu = FindOnPath(QemuCommandLine.Binary)
            ?? throw new CliException($"--accel tcg needs QEMU: {QemuCommandLine.Binary} is not on PATH (Debian: apt-get install {QemuCommandLine.Package})");
        string setpriv = FindOnPath("setpriv")
            ?? throw new CliException("--accel tcg needs setpriv (Debian: util-linux) so that QEMU dies with kit");
        if (spec.MemoryBytes % (1 << 20) != 0)
        {
            throw new CliException("--memory: under --accel tcg the size must be whole MiB");
        }

        var owned = new List<IDisposable>();
        // vhost-user sockets live in a fresh 0700 directory (mkdtemp): QEMU 7.2 takes no pre-connected descriptor for
        // a vhost-user chardev ("does not support FD passing"), so it connects to a path. Each path is unlinked as soon
        // as QEMU's one connection is accepted, and the directory with it.
        DirectoryInfo runtime = Directory.CreateTempSubdirectory("kit-vm-");
        try
        {
            using SocketPair qmpPair = SocketPair.Create();
            string? netPath = null, vsockPath = null;
            if (net is not null)
            {
                var device = new VirtioNet(net, spec.Mac ?? NetMacs.Random());
                owned.Add(device);
                netPath = Path.Combine(runtime.FullName, "net.sock");
                owned.Add(new FrontendSocket(netPath, new VhostUserBackend(device, logs?.CreateLogger("vhost-user-net"))));
            }
            if (spec.VsockPath is { } hostPath)
            {
                var host = new UnixVsockHost(hostPath);
                var device = new VirtioVsock(spec.VsockCid, host);
                owned.Add(host);
                try
                {
                    host.Start(device);
                }
                catch (IOException e)
                {
                    throw new CliException($"--vsock: {e.Message}");
                }
                vsockPath = Path.Combine(runtime.FullName, "vsock.sock");
                owned.Add(new FrontendSocket(vsockPath, new VhostUserBackend(device, logs?.CreateLogger("vhost-user-vsock"))));
            }

            var wiring = new QemuCommandLine.Wiring(qmpPair.ChildFd, netPath, vsockPath);
            // setpriv sets PR_SET_PDEATHSIG before it execs QEMU: when kit dies, even by SIGKILL, the kernel kills QEMU.
            // The signal follows the thread that forked, so this must run on a thread that lives as long as kit's
            // wait for QEMU (the command's own thread).
            var start = new ProcessStartInfo(setpriv)
            {
                UseShellExecute = false,
                RedirectStandardOutput = true,
            };
            foreach (string a in (string[])["--pdeathsig", "KILL", "--", qemu])
            {
                start.ArgumentList.Add(a);
            }
            foreach (string a in QemuCommandLine.Build(spec, wiring))
            {
                start.ArgumentList.Add(a);
            }
            using Process process = Process.Start(start) ?? throw new CliException($"cannot start {qemu}");
            qmpPair.CloseChildEnd();
            using var qmp = new Qmp(qmpPair.Ours);
            spec.Control?.Bind(qmp.PowerDown, qmp.Quit);

            MachineExit? panicEnd = null;
            var watcher = new PanicWatcher(console, () =>
            {
                // A panic=0 kernel would hang here forever once its banner is out.
                panicEnd = new MachineExit(MachineExitKind.Panic, "the guest kernel panicked");
                TryKill(process);
            });
            using PosixSignalRegistration term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c =>
            {
                c.Cancel = true;
                qmp.Quit();
            });
            Stream output = process.StandardOutput.BaseStream;
            byte[] buffer = new byte[16 * 1024];
            int n;
            while ((n = output.Read(buffer)) > 0)
            {
                watcher.Write(buffer.AsSpan(0, n));
            }
            process.WaitForExit();
            return panicEnd ?? ExitOf(process.ExitCode, qmp, watcher.PanicSeen);
        }
        finally
        {
            for (int i = owned.Count - 1; i >= 0; i--)
            {
                owned[i].Dispose();
            }
            DeleteRuntime(runtime);
        }
    }

    private static void DeleteRuntime(DirectoryInfo runtime)
    {
        try
        {
            runtime.Delete(recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>
    /// A vhost-user socket for exactly one frontend (the QEMU kit starts): accepts one connection, removes its socket
    /// file at once, and hands the connection to the backend.
    /// </summary>
    private sealed class FrontendSocket : IDisposable
    {
        private readonly Socket _listener;
        private readonly UnixSocketFile.Binding _file;
        private readonly VhostUserBackend _backend;

        public FrontendSocket(string path, VhostUserBackend backend)
        {
            _backend = backend;
            _listener = UnixSocketFile.Bind(path, SocketType.Stream, out _file);
            _listener.Listen(1);
            new Thread(Accept) { IsBackground = true, Name = "kit-vhost-user-accept" }.Start();
        }

        private void Accept()
        {
            try
            {
                Socket frontend = _listener.Accept();
                _file.Dispose();
                _listener.Dispose();
                _backend.Serve(frontend);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            _listener.Dispose();
            _file.Dispose();
            _backend.Dispose();
        }
    }

    /// <summary>How the guest ended, from QEMU's exit status, QMP's SHUTDOWN reason and the console.</summary>
    internal static MachineExit ExitOf(int qemuExitCode, Qmp qmp, bool panicOnConsole) => ExitOf(qemuExitCode, qmp.ShutdownReason, qmp.Panicked || panicOnConsole);

    internal static MachineExit ExitOf(int qemuExitCode, string? shutdownReason, bool panicked)
    {
        if (panicked || shutdownReason == "guest-panic")
        {
            return new MachineExit(MachineExitKind.Panic, "the guest kernel panicked");
        }
        return shutdownReason switch
        {
            "guest-shutdown" => new MachineExit(MachineExitKind.PowerOff, "the guest powered off"),
            // -no-reboot turns a reset (reboot=k, a triple fault) into the end of QEMU, as kit's own VMM ends on one.
            "guest-reset" => new MachineExit(MachineExitKind.Reset, "the guest reset the machine"),
            null => new MachineExit(MachineExitKind.Error, $"QEMU exited with status {qemuExitCode} before the guest shut down"),
            _ => new MachineExit(MachineExitKind.Error, $"QEMU stopped ({shutdownReason}, status {qemuExitCode})"),
        };
    }

    private static void TryKill(Process process)
    {
        try
        {
            process.Kill();
        }
        catch (InvalidOperationException)
        {
        }
    }

    private static string? FindOnPath(string name)
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, name);
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return null;
    }
}
