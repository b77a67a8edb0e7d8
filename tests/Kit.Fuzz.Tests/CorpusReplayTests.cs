namespace Kit.Fuzz.Tests;

/// <summary>
/// Replays every file of the fuzz corpus (tests/Kit.Fuzz/corpus/TARGET/*) and every crash reproducer
/// (tests/Kit.Fuzz/regressions/TARGET/*) through its target's entry point: none may throw. A reproducer goes in with
/// its fix, so every one of them must pass.
/// </summary>
public sealed class CorpusReplayTests
{
    private static string FuzzDir()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "tests", "Kit.Fuzz");
            if (Directory.Exists(Path.Combine(candidate, "corpus")))
            {
                return candidate;
            }
        }
        throw new DirectoryNotFoundException("tests/Kit.Fuzz/corpus not found above " + AppContext.BaseDirectory);
    }

    public static TheoryData<string, string> Inputs()
    {
        var data = new TheoryData<string, string>();
        string root = FuzzDir();
        foreach (string kind in new[] { "corpus", "regressions" })
        {
            string dir = Path.Combine(root, kind);
            if (!Directory.Exists(dir))
            {
                continue;
            }
            foreach (string targetDir in Directory.GetDirectories(dir).Order(StringComparer.Ordinal))
            {
                foreach (string file in Directory.GetFiles(targetDir).Order(StringComparer.Ordinal))
                {
                    data.Add(Path.GetFileName(targetDir), $"{kind}/{Path.GetFileName(targetDir)}/{Path.GetFileName(file)}");
                }
            }
        }
        return data;
    }

    [Fact]
    public void EveryTargetHasSeeds()
    {
        string corpus = Path.Combine(FuzzDir(), "corpus");
        foreach (string target in FuzzTargets.Names)
        {
            Assert.True(Directory.Exists(Path.Combine(corpus, target)) && Directory.GetFiles(Path.Combine(corpus, target)).Length > 0,
                $"fuzz target {target} has no seed corpus");
        }
    }

    [Theory]
    [MemberData(nameof(Inputs))]
    public void ReplayDoesNotThrow(string target, string file)
    {
        Assert.True(FuzzTargets.Exists(target), $"{file}: no fuzz target named {target}");
        FuzzTargets.Run(target, File.ReadAllBytes(Path.Combine(FuzzDir(), file)));
    }
}
