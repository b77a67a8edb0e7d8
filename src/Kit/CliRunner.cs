using System.CommandLine;
using System.CommandLine.Parsing;

namespace Kit.Cli;

/// <summary>
/// Runs a parsed command line and turns failures into one clear line on stderr and a non-zero exit code,
/// as design.md's CLI contract asks: users never see a stack trace.
/// </summary>
internal static class CliRunner
{
    /// <summary>
    /// Commands whose own failures (usage errors and <see cref="CliException"/>s with the default code 1) exit with
    /// another code: `kit net run` keeps docker run's 125, so that 1 stays its command's own.
    /// </summary>
    public static readonly Dictionary<Command, int> FailureExitCodes = [];

    public static int Run(RootCommand root, string[] args)
    {
        ParseResult? parse = null;
        try
        {
            var config = new InvocationConfiguration { EnableDefaultExceptionHandler = false };
            parse = root.Parse(args);
            if (parse.Errors.Count > 0)
            {
                // One line per problem, not System.CommandLine's default of the errors followed by the whole help.
                foreach (ParseError error in parse.Errors)
                {
                    Console.Error.WriteLine($"kit: {error.Message}");
                }
                return FailureCode(parse, 1);
            }
            KitLogging.Configure(parse);
            return parse.Invoke(config);
        }
        catch (CliException e)
        {
            // One line per problem (CliException.Many carries several).
            foreach (string line in e.Message.Split('\n'))
            {
                Console.Error.WriteLine($"kit: {line}");
            }
            return e.ExitCode == 1 ? FailureCode(parse, 1) : e.ExitCode;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            Console.Error.WriteLine($"kit: {e.Message}");
            return FailureCode(parse, 1);
        }
    }

    private static int FailureCode(ParseResult? parse, int code) =>
        parse is null ? code : FailureExitCodes.GetValueOrDefault(parse.CommandResult.Command, code);
}

/// <summary>An expected failure with a message meant for the user.</summary>
internal sealed class CliException(string message, int exitCode = 1) : Exception(message)
{
    public int ExitCode { get; } = exitCode;

    /// <summary>Several problems found at once (a command checks all its flags before it acts): one line each.</summary>
    public static CliException Many(IReadOnlyList<string> problems) => new(string.Join('\n', problems));
}
