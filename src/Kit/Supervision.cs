using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using System.Text;
using Kit.Linux;
using Microsoft.Win32.SafeHandles;

namespace Kit.Cli;

/// <summary>
/// How a supervisor learns that a long-running kit command is up: <c>--ready-fd N</c> (slirp4netns' and gvproxy's
/// convention: "1" is written to descriptor N, which is then closed), <c>--pid-file FILE</c>, and systemd's
/// <c>Type=notify</c> (READY=1 to $NOTIFY_SOCKET, sd_notify(3)). A command calls <see cref="Ready"/> once it serves,
/// and disposes the result when it stops: the pid file goes, if it still names this process.
/// </summary>
internal sealed class Supervision : IDisposable
{
    private static readonly Option<int?> ReadyFdOption = new("--ready-fd")
    {
        HelpName = "N",
        Description = "Write \"1\" to inherited descriptor N (then close it) once serving, for a supervisor to wait on.",
    };

    private static readonly Option<FileInfo?> PidFileOption = new("--pid-file")
    {
        HelpName = "FILE",
        Description = "Write kit's process id to FILE once serving (0600, never through a symlink); removed at exit.",
    };

    private readonly string? _pidFile;

    private Supervision(string? pidFile) => _pidFile = pidFile;

    /// <summary>Adds --ready-fd and --pid-file to a long-running command.</summary>
    public static void AddTo(Command command)
    {
        command.Options.Add(ReadyFdOption);
        command.Options.Add(PidFileOption);
    }

    /// <summary>Tells the supervisors that the command serves; failures to do so are the command's own (exit non-zero).</summary>
    public static Supervision Ready(ParseResult parse)
    {
        string? pidFile = parse.GetValue(PidFileOption)?.FullName;
        if (pidFile is not null)
        {
            try
            {
                WritePidFile(pidFile);
            }
            catch (IOException e)
            {
                throw new CliException($"--pid-file: {e.Message}");
            }
        }
        if (parse.GetValue(ReadyFdOption) is int fd)
        {
            if (fd < 3)
            {
                throw new CliException($"--ready-fd: {fd} is standard input, output or error; use an inherited descriptor (3 or more)");
            }
            try
            {
                using var ready = new FileStream(new SafeFileHandle(fd, ownsHandle: true), FileAccess.Write, bufferSize: 0);
                ready.Write("1"u8);
            }
            catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
            {
                throw new CliException($"--ready-fd: cannot write to descriptor {fd.ToString(CultureInfo.InvariantCulture)}: {e.Message}");
            }
        }
        NotifySystemd("READY=1");
        return new Supervision(pidFile);
    }

    /// <summary>This process's id in <paramref name="path"/>: 0600, never through a symlink (PrivateFile).</summary>
    /// <exception cref="IOException">The path is a symlink, not a regular file, or cannot be written.</exception>
    public static void WritePidFile(string path)
    {
        using SafeFileHandle file = PrivateFile.CreateForWrite(path);
        RandomAccess.Write(file, Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n"), 0);
    }

    /// <summary>sd_notify(3): one datagram to $NOTIFY_SOCKET, a path or (leading '@') an abstract name. Best effort.</summary>
    private static void NotifySystemd(string state)
    {
        string? target = Environment.GetEnvironmentVariable("NOTIFY_SOCKET");
        if (string.IsNullOrEmpty(target))
        {
            return;
        }
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
            string path = target[0] == '@' ? "\0" + target[1..] : target;
            socket.SendTo(Encoding.ASCII.GetBytes(state), new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException)
        {
            // No systemd listening: nothing to tell.
        }
    }

    public void Dispose()
    {
        if (_pidFile is null)
        {
            return;
        }
        try
        {
            // Only our own pid file: a later kit may have taken the name over.
            if (File.ReadAllText(_pidFile).Trim() == Environment.ProcessId.ToString(CultureInfo.InvariantCulture))
            {
                File.Delete(_pidFile);
            }
        }
        catch (IOException)
        {
        }
    }
}
