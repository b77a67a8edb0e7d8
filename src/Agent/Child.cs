using System.Runtime.InteropServices;
using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>Why a command could not be started; <see cref="NotFound"/> becomes the host's exit code 127.</summary>
internal sealed class SpawnException(string message, bool notFound) : Exception(message)
{
    public bool NotFound { get; } = notFound;
}

/// <summary>
/// A started child and the agent's ends of its standard streams. Without a TTY: three pipes. With one: the PTY master,
/// read for the merged output and written (through a duplicate, so the writer thread never races the reader's close)
/// for input. The descriptors are close-on-exec, so no other child inherits them.
/// </summary>
internal sealed class Child
{
    private const string DefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    private Child(int pid, bool tty, int input, int output, int error)
    {
        Pid = pid;
        Tty = tty;
        Input = input;
        Output = output;
        Error = error;
    }

    public int Pid { get; }

    public bool Tty { get; }

    /// <summary>Written for stdin: the pipe's write end, or a duplicate of the PTY master.</summary>
    public int Input { get; }

    /// <summary>Read for stdout: the pipe's read end, or the PTY master.</summary>
    public int Output { get; }

    /// <summary>Read for stderr; -1 with a TTY (its output is merged into <see cref="Output"/>).</summary>
    public int Error { get; }

    /// <summary>
    /// The environment a command sees: a sane base (init gives the agent almost none) with the request's variables on top.
    /// </summary>
    public static List<string> Environment(IReadOnlyDictionary<string, string>? requested, bool tty)
    {
        var env = new Dictionary<string, string>(StringComparer.Ordinal)
        {
            ["PATH"] = DefaultPath,
            ["HOME"] = "/root",
        };
        if (tty)
        {
            env["TERM"] = "xterm-256color";
        }
        if (requested is not null)
        {
            foreach ((string key, string value) in requested)
            {
                env[key] = value;
            }
        }
        var list = new List<string>(env.Count);
        foreach ((string key, string value) in env)
        {
            list.Add($"{key}={value}");
        }
        return list;
    }

    /// <summary>Checks an Exec request's shape: null when it is acceptable, else why not.</summary>
    public static string? Validate(ExecMessage exec)
    {
        if (exec.Argv is null || exec.Argv.Length == 0 || string.IsNullOrEmpty(exec.Argv[0]))
        {
            return "empty argv";
        }
        foreach (string? arg in exec.Argv)
        {
            if (arg is null || arg.Contains('\0', StringComparison.Ordinal))
            {
                return "argv holds a null or a NUL character";
            }
        }
        if (exec.Env is not null)
        {
            foreach ((string key, string? value) in exec.Env)
            {
                if (key.Length == 0 || key.Contains('=', StringComparison.Ordinal) || key.Contains('\0', StringComparison.Ordinal)
                    || value is null || value.Contains('\0', StringComparison.Ordinal))
                {
                    return $"bad environment variable name or value: {key}";
                }
            }
        }
        if (exec.Workdir is not null && (exec.Workdir.Length == 0 || exec.Workdir.Contains('\0', StringComparison.Ordinal)))
        {
            return "bad workdir";
        }
        return null;
    }

    /// <summary>Starts <paramref name="exec"/> (already validated).</summary>
    /// <exception cref="SpawnException">The program is missing or cannot be run, or the workdir is missing.</exception>
    public static Child Start(ExecMessage exec)
    {
        List<string> env = Environment(exec.Env, exec.Tty);
        string program = Resolve(exec.Argv[0], env);
        string workdir = exec.Workdir ?? (Directory.Exists("/root") ? "/root" : "/");
        if (!Directory.Exists(workdir))
        {
            throw new SpawnException($"no such directory: {workdir}", notFound: false);
        }
        return exec.Tty ? StartOnPty(exec, program, workdir, env) : StartOnPipes(exec, program, workdir, env);
    }

    /// <summary>
    /// The file to execute: a name with a '/' as it is; else the first executable match in the command's PATH (not the
    /// agent's, which is what posix_spawnp would search).
    /// </summary>
    private static string Resolve(string name, List<string> env)
    {
        if (name.Contains('/', StringComparison.Ordinal))
        {
            return name;
        }
        string path = DefaultPath;
        foreach (string entry in env)
        {
            if (entry.StartsWith("PATH=", StringComparison.Ordinal))
            {
                path = entry[5..];
            }
        }
        foreach (string dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, name);
            if (File.Exists(candidate) && Native.Access(candidate, Native.X_OK) == 0)
            {
                return candidate;
            }
        }
        throw new SpawnException($"no such file: {name}", notFound: true);
    }

    private static unsafe Child StartOnPipes(ExecMessage exec, string program, string workdir, List<string> env)
    {
        var stdin = Native.Pipe();
        var stdout = Native.Pipe();
        var stderr = Native.Pipe();
        int pid;
        try
        {
            using var block = new Native.SpawnBlock();
            void* actions = block.Alloc(Native.FileActionsSize);
            _ = Native.FileActionsInit(actions);
            try
            {
                // A new process group, so the agent can end the whole command (a shell's pipeline) when the host goes away.
                void* attr = Attributes(block, Native.POSIX_SPAWN_SETPGROUP);
                Check(Native.FileActionsAddDup2(actions, stdin.Read, 0), "adddup2");
                Check(Native.FileActionsAddDup2(actions, stdout.Write, 1), "adddup2");
                Check(Native.FileActionsAddDup2(actions, stderr.Write, 2), "adddup2");
                Check(Native.FileActionsAddChdir(actions, block.String(workdir)), "addchdir");
                pid = Spawn(block, program, exec.Argv, env, actions, attr);
            }
            finally
            {
                _ = Native.FileActionsDestroy(actions);
            }
        }
        catch
        {
            CloseAll(stdin.Read, stdin.Write, stdout.Read, stdout.Write, stderr.Read, stderr.Write);
            throw;
        }
        // The child's ends: only the child holds them now, so our reads see end-of-file when it (and its heirs) close.
        CloseAll(stdin.Read, stdout.Write, stderr.Write);
        return new Child(pid, tty: false, stdin.Write, stdout.Read, stderr.Read);
    }

    private static unsafe Child StartOnPty(ExecMessage exec, string program, string workdir, List<string> env)
    {
        (int master, string slave) = Native.OpenPty(exec.Rows == 0 ? (ushort)24 : exec.Rows, exec.Cols == 0 ? (ushort)80 : exec.Cols);
        int input = Native.Dup(master);
        if (input < 0)
        {
            CloseAll(master);
            throw new IOException($"dup: {Native.ErrorText(Marshal.GetLastPInvokeError())}");
        }
        int pid;
        try
        {
            using var block = new Native.SpawnBlock();
            void* actions = block.Alloc(Native.FileActionsSize);
            _ = Native.FileActionsInit(actions);
            try
            {
                // setsid() runs before the file actions (glibc __spawni_child), so the child is a session leader
                // without a terminal when it opens the slave, and the slave becomes its controlling terminal.
                void* attr = Attributes(block, Native.POSIX_SPAWN_SETSID);
                Check(Native.FileActionsAddOpen(actions, 0, block.String(slave), Native.O_RDWR, 0), "addopen");
                Check(Native.FileActionsAddDup2(actions, 0, 1), "adddup2");
                Check(Native.FileActionsAddDup2(actions, 0, 2), "adddup2");
                Check(Native.FileActionsAddChdir(actions, block.String(workdir)), "addchdir");
                pid = Spawn(block, program, exec.Argv, env, actions, attr);
            }
            finally
            {
                _ = Native.FileActionsDestroy(actions);
            }
        }
        catch
        {
            CloseAll(master, input);
            throw;
        }
        return new Child(pid, tty: true, input, master, -1);
    }

    /// <summary>
    /// Spawn attributes: the given flags plus a clean signal state. The .NET runtime ignores SIGPIPE and blocks some
    /// signals in its threads; ignored dispositions and the mask survive exec, so every signal is reset to default and
    /// the mask emptied, or `yes | head` would never end and Ctrl-C could be lost.
    /// </summary>
    private static unsafe void* Attributes(Native.SpawnBlock block, short flags)
    {
        void* attr = block.Alloc(Native.SpawnAttrSize);
        void* all = block.Alloc(Native.SigSetSize);
        void* none = block.Alloc(Native.SigSetSize);
        _ = Native.SigFillSet(all);
        _ = Native.SigEmptySet(none);
        Check(Native.SpawnAttrInit(attr), "posix_spawnattr_init");
        Check(Native.SpawnAttrSetSigDefault(attr, all), "setsigdefault");
        Check(Native.SpawnAttrSetSigMask(attr, none), "setsigmask");
        if ((flags & Native.POSIX_SPAWN_SETPGROUP) != 0)
        {
            Check(Native.SpawnAttrSetPGroup(attr, 0), "setpgroup");
        }
        Check(Native.SpawnAttrSetFlags(attr,
            (short)(flags | Native.POSIX_SPAWN_SETSIGDEF | Native.POSIX_SPAWN_SETSIGMASK)), "setflags");
        return attr;
    }

    private static unsafe int Spawn(Native.SpawnBlock block, string program, string[] argv, List<string> env, void* actions, void* attr)
    {
        try
        {
            int error = Native.PosixSpawn(out int pid, block.String(program), actions, attr, block.Strings(argv), block.Strings(env));
            return error switch
            {
                0 => pid,
                Native.ENOENT => throw new SpawnException($"no such file: {argv[0]}", notFound: true),
                Native.EACCES => throw new SpawnException($"permission denied: {argv[0]}", notFound: false),
                _ => throw new SpawnException($"cannot run {argv[0]}: {Native.ErrorText(error)}", notFound: false),
            };
        }
        finally
        {
            _ = Native.SpawnAttrDestroy(attr);
        }
    }

    private static void Check(int error, string what)
    {
        if (error != 0)
        {
            throw new IOException($"{what}: {Native.ErrorText(error)}");
        }
    }

    private static void CloseAll(params ReadOnlySpan<int> fds)
    {
        foreach (int fd in fds)
        {
            if (fd >= 0)
            {
                _ = Native.Close(fd);
            }
        }
    }
}
