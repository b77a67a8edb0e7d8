using System.CommandLine;
using System.CommandLine.Parsing;
using System.Runtime.InteropServices;
using Kit.Agent.Protocol;
using Kit.Cli.Machines;
using Kit.Linux;

namespace Kit.Cli.Commands;

/// <summary>
/// <c>kit exec [NAME] [--workdir DIR] [--env K=V]... [-t] -- CMD [ARGS...]</c> and <c>kit shell [NAME]</c>: a command in
/// the machine through its agent, with stdin, stdout and stderr streamed, signals passed on (SIGINT, SIGTERM, SIGHUP,
/// SIGQUIT; with a TTY the keys themselves) and window-size changes followed. The exit code is the command's; kit's own
/// failures use docker exec's codes: 125 (kit failed: the machine is not running, the agent is unreachable), 126 (the
/// command cannot be run), 127 (no such command).
/// </summary>
internal static class ExecCommand
{
    public const int KitFailed = 125, CannotRun = 126, NotFound = 127;

    public static IEnumerable<Command> Create() => [Exec(), Shell()];

    private static Command Exec()
    {
        var workdir = new Option<string?>("--workdir", "-w") { HelpName = "DIR", Description = "Working directory in the guest (default: /root)." };
        var env = new Option<string[]>("--env", "-e") { HelpName = "K=V", Description = "Set an environment variable (repeatable)." };
        var tty = new Option<bool>("--tty", "-t") { Description = "Give the command a terminal (and put this one in raw mode)." };
        var values = new Argument<string[]>("args")
        {
            Arity = ArgumentArity.OneOrMore,
            HelpName = "[NAME] -- CMD [ARGS...]",
            Description = "The machine (default: \"default\"), then after -- the command and its arguments.",
        };
        var exec = new Command("exec", "Run a command in a machine; its exit code is the command's.") { workdir, env, tty, values };
        CliRunner.FailureExitCodes[exec] = KitFailed;
        exec.SetAction(parse =>
        {
            string[] all = parse.GetValue(values) ?? [];
            // Everything after "--" is the command; a single word before it is the machine.
            int afterDash = AfterDoubleDash(parse);
            int before = afterDash < 0 ? 0 : all.Length - afterDash;
            if (before > 1)
            {
                throw new CliException($"exec: one machine name before --, got \"{string.Join(' ', all[..before])}\"", KitFailed);
            }
            string name = before == 1 ? all[0] : MachineCommands.DefaultName;
            string[] argv = all[before..];
            if (argv.Length == 0)
            {
                throw new CliException("exec: no command (kit exec [NAME] -- CMD [ARGS...])", KitFailed);
            }
            var vars = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (string kv in parse.GetValue(env) ?? [])
            {
                int eq = kv.IndexOf('=', StringComparison.Ordinal);
                if (eq <= 0)
                {
                    throw new CliException($"--env wants K=V, got \"{kv}\"", KitFailed);
                }
                vars[kv[..eq]] = kv[(eq + 1)..];
            }
            return Run(name, argv, vars, parse.GetValue(workdir), parse.GetValue(tty));
        });
        return exec;
    }

    /// <summary>How many arguments came after "--" (-1 when there was none).</summary>
    private static int AfterDoubleDash(ParseResult parse)
    {
        IReadOnlyList<Token> tokens = parse.Tokens;
        for (int i = 0; i < tokens.Count; i++)
        {
            if (tokens[i].Type == TokenType.DoubleDash)
            {
                return tokens.Count - i - 1;
            }
        }
        return -1;
    }

    private static Command Shell()
    {
        var name = new Argument<string>("name") { Arity = ArgumentArity.ZeroOrOne, Description = "The machine (default: \"default\").", DefaultValueFactory = _ => MachineCommands.DefaultName };
        var shell = new Command("shell", "An interactive login shell in a machine (a TTY, like limactl shell).") { name };
        CliRunner.FailureExitCodes[shell] = KitFailed;
        shell.SetAction(parse => Run(parse.GetValue(name)!, ["/bin/bash", "-l"], new Dictionary<string, string>(), null, tty: true));
        return shell;
    }

    private static int Run(string name, string[] argv, Dictionary<string, string> env, string? workdir, bool tty)
    {
        MachinePaths paths = MachinePaths.For(name);
        if (!File.Exists(paths.Control) || !MachineLock.IsHeld(paths))
        {
            throw new CliException($"{name} is not running (kit up {name})", KitFailed);
        }
        if (tty && Environment.GetEnvironmentVariable("TERM") is { Length: > 0 } term)
        {
            env.TryAdd("TERM", term);
        }
        (ushort rows, ushort cols) = tty ? Terminal.Size() : ((ushort)0, (ushort)0);
        return RunAsync(paths, new ExecRequest(argv)
        {
            Env = env,
            Workdir = workdir,
            Tty = tty,
            Rows = rows == 0 ? (ushort)24 : rows,
            Cols = cols == 0 ? (ushort)80 : cols,
        }).GetAwaiter().GetResult();
    }

    private static async Task<int> RunAsync(MachinePaths paths, ExecRequest request)
    {
        AgentClient agent;
        try
        {
            Stream stream = await VsockDial.ConnectAsync(paths.Vsock, AgentPort.Vsock, CancellationToken.None).ConfigureAwait(false);
            agent = await AgentClient.ConnectAsync(stream, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or AgentProtocolException)
        {
            throw new CliException($"cannot reach {paths.Name}'s agent: {e.Message}", KitFailed);
        }
        await using (agent)
        {
            ExecSession session;
            try
            {
                session = await agent.ExecAsync(request, CancellationToken.None).ConfigureAwait(false);
            }
            catch (AgentExecException e)
            {
                throw new CliException($"exec: {e.Message}", e.IsNotFound ? NotFound : CannotRun);
            }
            await using (session)
            {
                var registrations = new List<PosixSignalRegistration>();
                foreach (PosixSignal signal in (PosixSignal[])[PosixSignal.SIGINT, PosixSignal.SIGTERM, PosixSignal.SIGHUP, PosixSignal.SIGQUIT])
                {
                    registrations.Add(PosixSignalRegistration.Create(signal, c =>
                    {
                        c.Cancel = true;
                        _ = session.SignalAsync(ProcessSignal.Number(signal), CancellationToken.None);
                    }));
                }
                if (request.Tty)
                {
                    registrations.Add(PosixSignalRegistration.Create(PosixSignal.SIGWINCH, c =>
                    {
                        c.Cancel = true;
                        (ushort rows, ushort cols) = Terminal.Size();
                        if (rows > 0)
                        {
                            _ = session.ResizeAsync(rows, cols, CancellationToken.None);
                        }
                    }));
                }
                using IDisposable? raw = request.Tty && Terminal.IsTerminal(0) ? Terminal.Raw() : null;
                try
                {
                    Stream stdout = Console.OpenStandardOutput(), stderr = Console.OpenStandardError();
                    return await session.RunAsync(Console.OpenStandardInput(), stdout, stderr, CancellationToken.None).ConfigureAwait(false);
                }
                catch (Exception e) when (e is IOException or AgentProtocolException)
                {
                    throw new CliException($"exec: lost {paths.Name}'s agent: {e.Message}", KitFailed);
                }
                finally
                {
                    foreach (PosixSignalRegistration r in registrations)
                    {
                        r.Dispose();
                    }
                }
            }
        }
    }
}
