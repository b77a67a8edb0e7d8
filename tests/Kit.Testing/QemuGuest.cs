using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Kit.Testing;

/// <summary>What a guest run printed and how it ended.</summary>
/// <param name="ExitCode">The guest command's exit code, from the <c>KIT-GUEST-EXIT</c> marker.</param>
/// <param name="Output">Console text between the start and exit markers (the command's output; kernel messages can interleave).</param>
/// <param name="Serial">The whole serial console, QEMU's stderr appended.</param>
/// <param name="BootTime">From QEMU start to the <c>KIT-GUEST-START</c> marker.</param>
/// <param name="Elapsed">From QEMU start to its exit.</param>
public sealed record GuestResult(int ExitCode, string Output, string Serial, TimeSpan BootTime, TimeSpan Elapsed);

/// <summary>A guest that did not reach its exit marker (timeout, panic, QEMU error); the message has the serial tail.</summary>
public sealed class GuestFailedException(string message) : Exception(message);

/// <summary>
/// A QEMU TCG guest running the default guest (guest/build.sh) with a shell script as its command.
/// The script is packed as /kit/run into a small cpio archive appended to the initramfs. At most
/// <see cref="MaxConcurrentGuests"/> guests run at once on the machine, across test processes (2 cores).
/// </summary>
public sealed class QemuGuest : IAsyncDisposable
{
    public const string StartMarker = "KIT-GUEST-START";
    public const string ExitMarker = "KIT-GUEST-EXIT ";

    /// <summary>Concurrent QEMU guests on this machine (all test processes together).</summary>
    public const int MaxConcurrentGuests = 2;

    /// <summary>The QEMU <c>-name</c> prefix; the owning test process id follows.</summary>
    internal const string OwnerTag = "kit-test-";

    private static readonly Lazy<int> s_orphansKilled = new(KillOrphans);

    private readonly RunningProcess _qemu;
    private readonly IDisposable _slot;
    private readonly string _tempDir;
    private readonly TimeSpan _timeout;
    private readonly Stopwatch _clock;
    private TimeSpan? _bootTime;
    private int _disposed;

    private QemuGuest(RunningProcess qemu, IDisposable slot, string tempDir, TimeSpan timeout, Stopwatch clock)
    {
        _qemu = qemu;
        _slot = slot;
        _tempDir = tempDir;
        _timeout = timeout;
        _clock = clock;
        _ = qemu.WaitForLineAsync(l => l.Contains(StartMarker, StringComparison.Ordinal), timeout)
            .ContinueWith(
                t =>
                {
                    if (t.IsCompletedSuccessfully)
                    {
                        _bootTime = _clock.Elapsed;
                    }
                    else
                    {
                        _ = t.Exception; // observed: a guest that never starts is reported by WaitForExitAsync
                    }
                },
                TaskScheduler.Default);
    }

    /// <summary>The serial console so far (terminal escapes removed, see <see cref="Text.Printable"/>).</summary>
    public string Serial => _qemu.StandardOutput;

    /// <summary>The QEMU process id.</summary>
    public int ProcessId => _qemu.Id;

    /// <summary>Boots a guest, runs <paramref name="script"/> (sh) as its command, and waits for power-off.</summary>
    /// <exception cref="GuestFailedException">Timeout, or the guest stopped without an exit marker.</exception>
    public static async Task<GuestResult> RunAsync(string script, QemuGuestOptions? options = null, CancellationToken cancellationToken = default)
    {
        await using QemuGuest guest = await StartAsync(script, options, cancellationToken).ConfigureAwait(false);
        return await guest.WaitForExitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Starts a guest (after waiting for a free slot) and returns while it boots, for tests that talk to it.
    /// Dispose kills QEMU, removes its temporary files and frees the slot.
    /// </summary>
    /// <param name="script">
    /// The guest command (sh script), or null: then a <c>kit.cmd=</c> kernel argument (see
    /// <see cref="KernelCommandArgument"/>) or else an interactive shell on the console.
    /// </param>
    public static async Task<QemuGuest> StartAsync(string? script, QemuGuestOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new QemuGuestOptions();
        _ = s_orphansKilled.Value;
        GuestImage image = options.Image ?? await GuestImage.GetDefaultAsync(cancellationToken).ConfigureAwait(false);
        IDisposable slot = await QemuSlots.AcquireAsync(cancellationToken).ConfigureAwait(false);
        string tempDir = Directory.CreateTempSubdirectory("kit-qemu-").FullName;
        try
        {
            string initrd = Path.Combine(tempDir, "initrd.gz");
            await image.WriteInitrdAsync(initrd, script, options.Files, cancellationToken).ConfigureAwait(false);
            var clock = Stopwatch.StartNew();
            RunningProcess qemu = ProcessRunner.Start("qemu-system-x86_64", options.BuildArguments(image, initrd));
            qemu.Process.StandardInput.Close();
            return new QemuGuest(qemu, slot, tempDir, options.Timeout, clock);
        }
        catch
        {
            TryDelete(tempDir);
            slot.Dispose();
            throw;
        }
    }

    /// <summary>Waits for a console line containing <paramref name="text"/> and returns it.</summary>
    public async Task<string> WaitForSerialAsync(string text, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        try
        {
            return await _qemu.WaitForLineAsync(l => l.Contains(text, StringComparison.Ordinal), timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new GuestFailedException($"guest console never showed \"{text}\" within {timeout.TotalSeconds:F0} s\n{Describe()}");
        }
    }

    /// <summary>Waits until QEMU exits (the guest powered off) or the options' timeout passes since start.</summary>
    /// <exception cref="GuestFailedException">Timeout (QEMU is killed), or no exit marker.</exception>
    public async Task<GuestResult> WaitForExitAsync(CancellationToken cancellationToken = default)
    {
        TimeSpan left = _timeout - _clock.Elapsed;
        ProcessResult result = await _qemu.WaitAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero, cancellationToken).ConfigureAwait(false);
        if (result.TimedOut)
        {
            throw new GuestFailedException($"QEMU guest did not power off within {_timeout.TotalSeconds:F0} s (killed)\n{Describe()}");
        }
        string serial = result.StandardOutput;
        if (!TryParseMarkers(serial, out int exitCode, out string output))
        {
            throw new GuestFailedException($"QEMU exited ({result.ExitCode}) without a {ExitMarker.Trim()} marker\n{Describe()}");
        }
        string all = result.StandardError.Length == 0 ? serial : serial + "--- qemu stderr ---\n" + result.StandardError;
        return new GuestResult(exitCode, output, all, _bootTime ?? result.Elapsed, result.Elapsed);
    }

    /// <summary>
    /// The kernel command line argument <c>kit.cmd=&lt;base64&gt;</c> that makes the guest run <paramref name="script"/>
    /// when no /kit/run is packed (e.g. for a guest booted by another VMM). The whole command line is limited to
    /// 2048 bytes on x86, so keep such scripts short.
    /// </summary>
    public static string KernelCommandArgument(string script) =>
        "kit.cmd=" + Convert.ToBase64String(Encoding.UTF8.GetBytes(script));

    /// <summary>Finds the command output and exit code between the markers of <paramref name="serial"/>.</summary>
    public static bool TryParseMarkers(string serial, out int exitCode, out string output)
    {
        exitCode = -1;
        output = "";
        int exit = serial.LastIndexOf(ExitMarker, StringComparison.Ordinal);
        if (exit < 0)
        {
            return false;
        }
        int digits = exit + ExitMarker.Length;
        int end = digits;
        while (end < serial.Length && char.IsAsciiDigit(serial[end]))
        {
            end++;
        }
        if (!int.TryParse(serial.AsSpan(digits, end - digits), NumberStyles.None, CultureInfo.InvariantCulture, out exitCode))
        {
            return false;
        }
        int start = serial.IndexOf(StartMarker, StringComparison.Ordinal);
        if (start >= 0 && start < exit)
        {
            int from = serial.IndexOf('\n', start);
            output = from >= 0 && from < exit ? serial[(from + 1)..exit] : "";
        }
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        await Task.Run(_qemu.Dispose).ConfigureAwait(false);
        TryDelete(_tempDir);
        _slot.Dispose();
    }

    /// <summary>
    /// Kills QEMU guests left running by test processes that died (a crashed or killed runner cannot dispose
    /// them), so they do not hold CPU and QEMU slots. Returns how many it killed.
    /// </summary>
    public static int KillOrphans()
    {
        int killed = 0;
        foreach (string dir in Directory.GetDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
            {
                continue;
            }
            string[] args;
            try
            {
                args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                continue; // exited meanwhile
            }
            int name = Array.IndexOf(args, "-name");
            if (name < 0 || name + 1 >= args.Length || !args[0].Contains("qemu-system", StringComparison.Ordinal)
                || !args[name + 1].StartsWith(OwnerTag, StringComparison.Ordinal)
                || !int.TryParse(args[name + 1].AsSpan(OwnerTag.Length), NumberStyles.None, CultureInfo.InvariantCulture, out int owner)
                || owner == Environment.ProcessId || Directory.Exists($"/proc/{owner}"))
            {
                continue;
            }
            try
            {
                using Process orphan = Process.GetProcessById(pid);
                orphan.Kill();
                killed++;
            }
            catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception)
            {
            }
        }
        return killed;
    }

    private string Describe() =>
        $"--- serial console (tail) ---\n{Text.Tail(_qemu.StandardOutput, 6000)}" +
        (_qemu.StandardError.Length == 0 ? "" : $"\n--- qemu stderr ---\n{Text.Tail(_qemu.StandardError, 2000)}");

    private static void TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
