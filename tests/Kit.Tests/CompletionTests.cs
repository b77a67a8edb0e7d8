using Kit.Testing;

namespace Kit.Tests;

/// <summary>
/// Issue 14, "Machine-readable and interactive": completion scripts and the man page come from the command tree.
/// Bash's and groff's own parsers judge them.
/// </summary>
public sealed class CompletionTests
{
    /// <summary>Sources `kit completion bash` in a real bash and asks for the candidates at a cursor.</summary>
    private static string[] BashCandidates(params string[] words)
    {
        string script = $"source <('{KitCli.ExecutablePath}' completion bash) || exit 3; COMP_WORDS=({string.Join(' ', words.Select(w => $"'{w}'"))}); COMP_CWORD={words.Length - 1}; _kit; printf '%s\\n' \"${{COMPREPLY[@]}}\"";
        ProcessResult r = ProcessRunner.Run("bash", ["-c", script]);
        Assert.True(r.ExitCode == 0, r.Output);
        return r.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    [Fact]
    public void BashCompletesCommandsSubcommandsAndOptions()
    {
        string[] top = BashCandidates("kit", "");
        Assert.Contains("vm", top);
        Assert.Contains("data", top);
        Assert.Contains("--log-level", top);
        Assert.Equal(["run"], BashCandidates("kit", "vm", "r"));
        Assert.Equal(["--kernel"], BashCandidates("kit", "vm", "run", "--ker"));
        Assert.Contains("--ready-fd", BashCandidates("kit", "-v", "data", "serve", "--re"));
        Assert.Equal(["watch", "write"], BashCandidates("kit", "data", "w").Order());
        Assert.Equal(["--set"], BashCandidates("kit", "data", "commit", "--se"));
        Assert.Empty(BashCandidates("kit", "net", "run", "--", "ech"));
    }

    [Fact]
    public void FishAndZshScriptsCoverEveryCommand()
    {
        string fish = KitCli.Run("completion", "fish").StandardOutput;
        Assert.Contains("complete -c kit -f -n 'test \"(__kit_path)\" = \"vm\"' -a run", fish, StringComparison.Ordinal);
        Assert.Contains("-l pid-file", fish, StringComparison.Ordinal);
        string zsh = KitCli.Run("completion", "zsh").StandardOutput;
        Assert.StartsWith("#compdef kit\n", zsh, StringComparison.Ordinal);
        Assert.Contains("complete -o default -F _kit kit", zsh, StringComparison.Ordinal);
    }

    [Fact]
    public void TheManPageRendersWithoutWarningsAndListsEveryCommand()
    {
        ProcessResult man = KitCli.Run("man");
        Assert.Equal(0, man.ExitCode);
        string page = man.StandardOutput;
        foreach (string command in new[] { "guest build", "vm run", "net run", "net serve", "data serve", "data ls", "data cat", "data write", "data commit", "data watch", "up", "completion", "man" })
        {
            Assert.Contains($".SS \"kit {command}", page, StringComparison.Ordinal);
        }
        string file = Path.GetTempFileName();
        try
        {
            File.WriteAllText(file, page);
            ProcessResult groff = ProcessRunner.Run("groff", ["-man", "-Tutf8", "-ww", "-z", file]);
            Assert.True(groff.ExitCode == 0 && groff.StandardError.Length == 0, groff.Output);
        }
        finally
        {
            File.Delete(file);
        }
    }
}
