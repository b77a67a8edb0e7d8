using System.CommandLine;
using System.Diagnostics;
using System.Reflection;
using Spectre.Console;

namespace Kit.Cli.Commands;

/// <summary>
/// `kit guest build`: builds the default guest (stock Debian kernel + busybox initramfs) from Debian packages,
/// cached by kernel version. The work is done by guest/build.sh, embedded in this assembly so the command
/// works from the published CLI alone.
/// </summary>
internal static class GuestCommand
{
    public static Command Create()
    {
        var cacheOption = new Option<DirectoryInfo?>("--cache")
        {
            HelpName = "DIR",
            Description = "Cache directory (default: $KIT_GUEST_CACHE, else ~/.cache/kit/guest).",
        };
        var json = new Option<bool>("--json") { Description = "Print {\"kernel\": PATH, \"initrd\": PATH} instead of kernel=PATH and initrd=PATH lines." };
        var build = new Command("build", "Build (or reuse from cache) the default guest kernel and initramfs; prints their paths.")
        {
            cacheOption, json,
        };
        build.SetAction(parse =>
        {
            (string kernel, string initrd) = Ensure(parse.GetValue(cacheOption));
            Console.WriteLine(parse.GetValue(json) ? Json(kernel, initrd) : $"kernel={kernel}\ninitrd={initrd}");
            return 0;
        });
        return new Command("guest", "The default guest: a stock Debian kernel with a busybox initramfs.") { build };
    }

    /// <summary>
    /// Builds the default guest or finds it in the cache; returns the kernel and initramfs paths. The script's
    /// steps ("step: ..." lines on its stderr: what it downloads, and from where, before it starts) are shown as a
    /// Spectre.Console status on a terminal and as plain "kit: ..." lines otherwise; its other stderr passes through;
    /// its result lines (kernel=..., initrd=...) are parsed here. The embedded script is
    /// handed to bash as its -c argument, never written to a file: a file in a shared directory under a predictable
    /// name is a place where another local user can plant a FIFO or symlink and feed root's bash their own commands.
    /// </summary>
    public static (string Kernel, string Initrd) Ensure(DirectoryInfo? cache)
    {
        var environment = new Dictionary<string, string>();
        if (cache is not null)
        {
            environment["KIT_GUEST_CACHE"] = cache.FullName;
        }
        (int exitCode, string output) = RunScript("guest/build.sh", [], environment, "guest", "default guest");
        string? kernel = null, initrd = null;
        foreach (string line in output.Split('\n', StringSplitOptions.TrimEntries))
        {
            if (line.StartsWith("kernel=", StringComparison.Ordinal))
            {
                kernel = line[7..];
            }
            else if (line.StartsWith("initrd=", StringComparison.Ordinal))
            {
                initrd = line[7..];
            }
        }
        if (exitCode != 0 || kernel is null || initrd is null)
        {
            throw new CliException($"building the default guest failed (guest/build.sh exit code {exitCode})");
        }
        return (kernel, initrd);
    }

    /// <summary>
    /// Runs one of the embedded guest/*.sh scripts (<paramref name="resource"/>) with <paramref name="arguments"/>,
    /// showing its steps under <paramref name="label"/> ("kit: LABEL: ..."); returns its exit code and standard output.
    /// Shared by `kit guest build` and `kit image build` (Machines/MachineImage.cs).
    /// </summary>
    internal static (int ExitCode, string Output) RunScript(
        string resource, IReadOnlyList<string> arguments, IReadOnlyDictionary<string, string> environment, string label, string caption)
    {
        string script;
        using (Stream stream = Assembly.GetExecutingAssembly().GetManifestResourceStream(resource)
            ?? throw new CliException($"{resource} is not embedded in this build"))
        using (var reader = new StreamReader(stream))
        {
            script = reader.ReadToEnd();
        }
        // bash -c SCRIPT NAME ARGS...: NAME becomes $0, which the script's messages and BASH_SOURCE use.
        var start = new ProcessStartInfo("bash") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(script);
        start.ArgumentList.Add(resource);
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }
        foreach ((string key, string value) in environment)
        {
            start.Environment[key] = value;
        }
        using Process process = Process.Start(start) ?? throw new CliException("cannot start bash");
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        ShowSteps(process.StandardError, label, caption);
        string output = stdout.GetAwaiter().GetResult();
        process.WaitForExit();
        return (process.ExitCode, output);
    }

    /// <summary>The paths as one JSON object (Utf8JsonWriter: no reflection, NativeAOT-safe).</summary>
    internal static string Json(string kernel, string initrd)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>();
        using (var w = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            w.WriteString("kernel", kernel);
            w.WriteString("initrd", initrd);
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    /// <summary>The step a "step: ..." line of guest/build.sh names, or null for any other line.</summary>
    internal static string? Step(string line) => line.StartsWith("step: ", StringComparison.Ordinal) ? line[6..] : null;

    /// <summary>A "progress: BYTES TOTAL" line of guest/build.sh's download, or null for any other line.</summary>
    internal static (long Bytes, long Total)? Progress(string line)
    {
        string[] f = line.Split(' ');
        return f.Length == 3 && f[0] == "progress:" && long.TryParse(f[1], out long bytes) && long.TryParse(f[2], out long total)
            ? (bytes, total)
            : null;
    }

    private static void ShowSteps(StreamReader stderr, string label, string caption)
    {
        if (Console.IsErrorRedirected)
        {
            for (string? line; (line = stderr.ReadLine()) is not null;)
            {
                if (Progress(line) is null)
                {
                    Console.Error.WriteLine(Step(line) is string step ? $"kit: {label}: {step}" : line);
                }
            }
            return;
        }
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
        console.Status().Spinner(Spinner.Known.Dots).Start(Markup.Escape($"{caption}: checking the cache"), status =>
        {
            for (string? line; (line = stderr.ReadLine()) is not null;)
            {
                if (Progress(line) is (long bytes, long total))
                {
                    status.Status(total > 0
                        ? Markup.Escape($"{caption}: downloading {bytes / 1048576.0:F1} of {total / 1048576.0:F1} MiB ({Math.Min(100, bytes * 100 / total)}%)")
                        : Markup.Escape($"{caption}: downloading {bytes / 1048576.0:F1} MiB"));
                }
                else if (Step(line) is string step)
                {
                    // Each finished step stays on screen; the spinner names the current one.
                    console.MarkupLineInterpolated($"[grey]kit: {label}:[/] {step}");
                    status.Status(Markup.Escape($"{caption}: {step}"));
                }
                else
                {
                    console.WriteLine(line);
                }
            }
        });
    }
}
