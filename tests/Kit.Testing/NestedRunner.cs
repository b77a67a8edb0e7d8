using System.Runtime.InteropServices;
using System.Text;

namespace Kit.Testing;

/// <summary>How to run a host command inside the nested-KVM guest.</summary>
public sealed class NestedOptions
{
    /// <summary>
    /// Boot, 9p mount and the command together. Measured here: L1 reaches its command in 7-16 s and a small .NET
    /// program runs there in 3-7 s (host files come over 9p); QEMU -enable-kvm booting the default guest inside L1
    /// (L2) took 37 s on an idle machine and 134 s on a loaded one, so give L2 boots a generous timeout.
    /// </summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(300);

    public int MemoryMiB { get; set; } = 2048;

    public int Cpus { get; set; } = 1;

    /// <summary>A host directory shared read-write and mounted at the same path inside, for the command's output files.</summary>
    public string? ResultsDirectory { get; set; }

    /// <summary>
    /// Host directories under /tmp or /run to keep visible (read-only) inside, where those two are fresh tmpfs.
    /// The repository, the .NET install and the default guest's directory are added automatically when they
    /// live there.
    /// </summary>
    public List<string> ExposedPaths { get; } = [];

    /// <summary>Extra environment for the command (added to the defaults of <see cref="NestedRunner.DefaultEnvironment"/>).</summary>
    public Dictionary<string, string> Environment { get; } = new(StringComparer.Ordinal);

    /// <summary>Extra QEMU devices or arguments for L1 (e.g. a stream netdev), applied after the defaults.</summary>
    public Action<QemuGuestOptions>? Configure { get; set; }
}

/// <summary>
/// Runs a host command line where <c>/dev/kvm</c> is real: inside an L1 QEMU TCG guest with <c>-cpu max</c>
/// (AMD SVM emulated) and <c>kvm_amd</c> loaded, with the host's <c>/</c> mounted read-only over virtio-9p and
/// <c>chroot</c>ed into (testing-here.md section 2). <c>/tmp</c> and <c>/run</c> are empty tmpfs inside.
/// </summary>
public static class NestedRunner
{
    /// <summary>The .NET install the tests run on (also visible inside L1 at the same path).</summary>
    public static string DotnetRoot { get; } =
        System.Environment.GetEnvironmentVariable("DOTNET_ROOT") is { Length: > 0 } root
            ? root
            : Path.GetFullPath(Path.Combine(RuntimeEnvironment.GetRuntimeDirectory(), "..", "..", ".."));

    /// <summary>The environment every nested command gets (L1's init has almost none).</summary>
    public static IReadOnlyDictionary<string, string> DefaultEnvironment { get; } = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["PATH"] = $"{DotnetRoot}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ["DOTNET_ROOT"] = DotnetRoot,
        ["HOME"] = "/tmp",
        ["TMPDIR"] = "/tmp",
        ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        ["DOTNET_NOLOGO"] = "1",
        ["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1",
        ["DOTNET_GENERATE_ASPNET_CERTIFICATE"] = "false",
        ["DOTNET_CLI_HOME"] = "/tmp",
        ["NUGET_PACKAGES"] = "/tmp/nuget",
        ["LANG"] = "C.UTF-8",
    };

    /// <summary>
    /// Boots L1, runs <paramref name="commandLine"/> (a sh script evaluated in the chroot, with
    /// <see cref="DefaultEnvironment"/> exported) and returns its output and exit code.
    /// </summary>
    /// <exception cref="GuestFailedException">Timeout, or L1 stopped without an exit marker.</exception>
    public static async Task<GuestResult> RunAsync(string commandLine, NestedOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new NestedOptions();
        GuestImage image = await GuestImage.GetDefaultAsync(cancellationToken).ConfigureAwait(false);
        var guest = new QemuGuestOptions
        {
            Cpu = "max",
            MemoryMiB = options.MemoryMiB,
            Cpus = options.Cpus,
            Timeout = options.Timeout,
            Image = image,
        };
        guest.KernelArguments.Add("kit.nested=1");
        var exposed = new List<string>();
        foreach (string path in (string[])[.. options.ExposedPaths, RepoPaths.Root, DotnetRoot, Path.GetDirectoryName(image.Kernel) ?? "/"])
        {
            string full = Path.GetFullPath(path).TrimEnd('/');
            if ((full.StartsWith("/tmp/", StringComparison.Ordinal) || full.StartsWith("/run/", StringComparison.Ordinal)) && !exposed.Contains(full))
            {
                if (full.Contains(' ', StringComparison.Ordinal) || full.Contains(',', StringComparison.Ordinal))
                {
                    throw new ArgumentException($"cannot expose '{full}' to the nested guest (space or comma in the path)", nameof(options));
                }
                exposed.Add(full);
            }
        }
        if (exposed.Count > 0)
        {
            guest.KernelArguments.Add("kit.expose=" + string.Join(',', exposed));
        }
        guest.AddShare("hostroot", "/", readOnly: true);
        if (options.ResultsDirectory is { } results)
        {
            string full = Path.GetFullPath(results);
            if (full.Contains(' ', StringComparison.Ordinal))
            {
                throw new ArgumentException("the results directory must not contain spaces (kernel command line)", nameof(options));
            }
            guest.AddShare("results", full);
            guest.KernelArguments.Add($"kit.results={full}");
        }
        options.Configure?.Invoke(guest);

        var script = new StringBuilder();
        foreach ((string key, string value) in DefaultEnvironment.Concat(options.Environment))
        {
            script.Append("export ").Append(key).Append('=').Append(Text.ShellQuote(value)).Append('\n');
        }
        // The kit under test (KitCli.ExecutablePath) stays the same for tests running inside L1: the path is on the
        // host root, which L1 mounts.
        if (System.Environment.GetEnvironmentVariable("KIT_EXE") is { Length: > 0 } kitExe && !options.Environment.ContainsKey("KIT_EXE"))
        {
            script.Append("export KIT_EXE=").Append(Text.ShellQuote(kitExe)).Append('\n');
        }
        script.Append("cd /tmp\n").Append(commandLine).Append('\n');
        using FileStream slot = await AcquireSlotAsync(cancellationToken).ConfigureAwait(false);
        return await QemuGuest.RunAsync(script.ToString(), guest, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// At most <see cref="Slots"/> nested L1s at once on this machine, whoever starts them (several test runs or
    /// developers in parallel): each L1 is a TCG guest that keeps a core busy, and more of them than cores slows every
    /// one and lets L2 boots time out. A slot is an exclusive lock on a file in /tmp (flock, released by the kernel if
    /// the process dies).
    /// </summary>
    private static async Task<FileStream> AcquireSlotAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            for (int i = 0; i < Slots; i++)
            {
                try
                {
                    return new FileStream($"/tmp/kit-nested-slot-{i}.lock", FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                }
                catch (IOException)
                {
                    // Held by another nested run: try the next slot.
                }
            }
            await Task.Delay(TimeSpan.FromSeconds(2), cancellationToken).ConfigureAwait(false);
        }
    }

    private static int Slots => Math.Max(1, System.Environment.ProcessorCount);

    /// <summary>A command line that runs a framework-dependent .NET app (its .dll) with the host's dotnet.</summary>
    public static string DotnetCommand(string dllPath, params string[] arguments) =>
        Text.ShellJoin([Path.Combine(DotnetRoot, "dotnet"), Path.GetFullPath(dllPath), .. arguments]);
}
