using Kit.Linux;

namespace Kit.Testing;

/// <summary>The default guest's kernel (bzImage) and initramfs (gzip'd cpio) as built by guest/build.sh.</summary>
public sealed record GuestImage(string Kernel, string Initrd)
{
    private static readonly SemaphoreSlim s_gate = new(1, 1);
    private static GuestImage? s_default;

    /// <summary>The kernel release (uname -r), the name of the cache directory build.sh keys the guest by.</summary>
    public string KernelVersion => Path.GetFileName(Path.GetDirectoryName(Kernel)) ?? "";

    /// <summary>First build on a clean machine downloads the kernel package and takes up to a couple of minutes.</summary>
    public static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(5);

    /// <summary>
    /// The default guest, built (or found in the cache) once per process by running guest/build.sh from the
    /// repository root. Thread-safe; concurrent callers wait for one build.
    /// </summary>
    public static async Task<GuestImage> GetDefaultAsync(CancellationToken cancellationToken = default)
    {
        if (Volatile.Read(ref s_default) is { } ready)
        {
            return ready;
        }
        await s_gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (s_default is null)
            {
                string script = Path.Combine(RepoPaths.Root, "guest", "build.sh");
                ProcessResult result = (await ProcessRunner.RunAsync(
                    "bash", [script], BuildTimeout, cancellationToken: cancellationToken).ConfigureAwait(false)).EnsureSuccess();
                Volatile.Write(ref s_default, Parse(result.StandardOutput));
            }
            return s_default!;
        }
        finally
        {
            s_gate.Release();
        }
    }

    /// <summary>
    /// Writes a copy of this initramfs with <paramref name="script"/> as /kit/run (and any extra files) appended as
    /// a second archive, so the guest runs it under any VMM (QEMU here, <c>kit vm run</c> in the nested guest).
    /// </summary>
    /// <param name="script">The guest command (sh), or null for none (then kit.cmd= or a shell decides).</param>
    /// <param name="files">Extra files: guest path (e.g. "kit/bin/tool") to bytes, mode 0755.</param>
    public async Task WriteInitrdAsync(string outputPath, string? script, IReadOnlyDictionary<string, byte[]>? files = null, CancellationToken cancellationToken = default)
    {
        var entries = new List<CpioArchive.Entry>();
        if (script is not null)
        {
            entries.Add(new("kit/run", System.Text.Encoding.UTF8.GetBytes(script)));
        }
        foreach ((string path, byte[] data) in files ?? new Dictionary<string, byte[]>())
        {
            entries.Add(new(path, data));
        }
        await using FileStream output = File.Create(outputPath);
        await using (FileStream baseInitrd = File.OpenRead(Initrd))
        {
            await baseInitrd.CopyToAsync(output, cancellationToken).ConfigureAwait(false);
        }
        if (entries.Count > 0)
        {
            await output.WriteAsync(CpioArchive.BuildGzip(entries), cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Reads the <c>kernel=</c> and <c>initrd=</c> lines build.sh prints last.</summary>
    public static GuestImage Parse(string buildOutput)
    {
        string? kernel = null;
        string? initrd = null;
        foreach (string line in buildOutput.Split('\n'))
        {
            if (line.StartsWith("kernel=", StringComparison.Ordinal))
            {
                kernel = line["kernel=".Length..].Trim();
            }
            else if (line.StartsWith("initrd=", StringComparison.Ordinal))
            {
                initrd = line["initrd=".Length..].Trim();
            }
        }
        if (kernel is null || initrd is null || !File.Exists(kernel) || !File.Exists(initrd))
        {
            throw new InvalidOperationException($"guest/build.sh did not name an existing kernel and initrd:\n{Text.Tail(buildOutput)}");
        }
        return new GuestImage(kernel, initrd);
    }
}
