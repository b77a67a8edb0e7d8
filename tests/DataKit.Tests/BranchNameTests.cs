using System.Diagnostics;
using System.Text;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Protocol;

namespace Kit.DataKit.Tests;

/// <summary>
/// Security review finding 6: DataKit used to take branch names git refuses (<c>HEAD</c>, <c>-rf</c>; <c>a.</c> was
/// taken and then failed with a bare EIO). Our verdict on a name must be git's own (<c>git check-ref-format --branch</c>),
/// for a table of tricky names and for names drawn at random from an alphabet of the characters the rules are about.
/// </summary>
public sealed class BranchNameTests : DataKitTestBase
{
    private static readonly string[] Table =
    [
        "master", "main", "feature/x", "a/b/c", "v1.0", "a-b_c", "a+b", "a@b", "@a", "a}", "a{", "héllo", "数据",
        "HEAD", "HEAD/x", "x/HEAD", "head", "-rf", "a-", "--", "a.", ".a", "a/.b", "a/b.", ".", "..", "a..b", "a/./b",
        "a b", "a~1", "a^", "a:b", "a?", "a*", "a[", "a]", "a\\b", "a/", "/a", "a//b", "a.lock", "a.lock/b", "a/b.lock",
        "a.locks", "lock", ".lock", "a@{b", "a@{", "@{-1}", "a@", "@@", "a\tb", "a\u007fb", "a\u0001", "refs/heads/x",
        "a/b/", "x.y.z", "a=b", "a'b", "a\"b", "a,b", "a;b", "a|b", "a<b", "a>b", "a!b", "a#b", "a$b", "a%b", "a&b",
    ];

    /// <summary>git's verdicts, one <c>git check-ref-format --branch</c> per name.</summary>
    private static bool GitAccepts(string name)
    {
        var psi = new ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("check-ref-format");
        psi.ArgumentList.Add("--branch");
        psi.ArgumentList.Add(name);
        psi.WorkingDirectory = Path.GetTempPath(); // outside any repository: no @{-N} expansion
        using Process p = Process.Start(psi)!;
        p.StandardOutput.ReadToEnd();
        p.StandardError.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode == 0;
    }

    private static void AssertSameVerdict(IEnumerable<string> names)
    {
        var differ = new List<string>();
        foreach (string n in names)
        {
            bool ours = GitStore.IsValidBranchName(n);
            if (ours != GitAccepts(n))
            {
                differ.Add($"\"{n}\" (ours: {(ours ? "valid" : "invalid")})");
            }
        }
        Assert.True(differ.Count == 0, "verdicts differ from git's for " + string.Join(", ", differ));
    }

    [Fact]
    public void VerdictsMatchGitForTheTable() => AssertSameVerdict(Table);

    [Fact]
    public void VerdictsMatchGitForRandomNames()
    {
        // The characters the rules are about, and some that are fine; a fixed seed so a failure is reproducible.
        const string Alphabet = "ab-./@{}~^:?*[\\ \t\u007fHEADlock_é";
        var random = new Random(6);
        var names = new List<string>();
        for (int i = 0; i < 300; i++)
        {
            var sb = new StringBuilder();
            int length = random.Next(1, 9);
            for (int j = 0; j < length; j++)
            {
                sb.Append(Alphabet[random.Next(Alphabet.Length)]);
            }
            if (sb.ToString() != "@") // refused by us on purpose (see BranchName); git's --branch takes it as HEAD
            {
                names.Add(sb.ToString());
            }
        }
        AssertSameVerdict(names);
    }

    [Theory]
    [InlineData("HEAD")]
    [InlineData("-rf")]
    [InlineData("a.")]
    [InlineData("a.lock")]
    [InlineData("a..b")]
    [InlineData("@")]
    public async Task MkdirOfAnInvalidBranchIsEinvalAndSaysWhy(string name)
    {
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => C.MkdirAsync("branch", name));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.StartsWith($"Invalid branch name \"{name}\": ", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(name, await C.ListAsync("branch"));
    }

    [Fact]
    public async Task RenameToAnInvalidBranchIsEinval()
    {
        await C.MkdirAsync("branch", "good");
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => C.WstatPathAsync("branch/good", Stat.DontTouch with { Name = "HEAD" }));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Contains("HEAD is reserved", e.Message, StringComparison.Ordinal);
    }
}
