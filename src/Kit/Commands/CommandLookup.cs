namespace Kit.Cli.Commands;

/// <summary>
/// Finds the program a command runs before anything is set up for it, so that `kit net run` answers as docker run and
/// a shell do: 127 for a command that is not found, 126 for one that cannot be executed (docs: docker run's exit
/// status; POSIX 2.8.2), and 125 stays for kit's own failures. The lookup is execvp's: a name containing '/' is a
/// path, any other is searched in PATH, in order.
/// </summary>
internal static class CommandLookup
{
    public const int NotExecutable = 126, NotFound = 127;

    /// <summary>Null when <paramref name="name"/> can be executed; otherwise the exit code and a one-line reason.</summary>
    public static (int ExitCode, string Message)? Check(string name, string? path)
    {
        if (name.Length == 0)
        {
            return (NotFound, "an empty command name");
        }
        if (name.Contains('/'))
        {
            return Executable(name) switch
            {
                null => null,
                false => (NotExecutable, $"{name}: permission denied (not an executable file)"),
                _ => (NotFound, $"{name}: no such file"),
            };
        }
        bool sawUnexecutable = false;
        foreach (string dir in (path ?? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin").Split(':'))
        {
            switch (Executable(Path.Combine(dir.Length == 0 ? "." : dir, name)))
            {
                case null:
                    return null;
                case false:
                    sawUnexecutable = true;
                    break;
            }
        }
        return sawUnexecutable
            ? (NotExecutable, $"{name}: permission denied (found in PATH, but not executable)")
            : (NotFound, $"{name}: command not found");
    }

    /// <summary>Null: a regular file with an execute bit (root may run it); false: there but not runnable; true: missing.</summary>
    private static bool? Executable(string file)
    {
        var info = new FileInfo(file);
        if (info.Exists)
        {
            const UnixFileMode anyExecute = UnixFileMode.UserExecute | UnixFileMode.GroupExecute | UnixFileMode.OtherExecute;
            return (info.UnixFileMode & anyExecute) != 0 ? null : false;
        }
        return Directory.Exists(file) ? false : true;
    }
}
