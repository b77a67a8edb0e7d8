using System.Net;
using Kit.DataKit.Store;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.Testing;

namespace Kit.DataKit.Tests;

/// <summary>
/// Issue 16, item 5: a transaction's author, committer and date files (beside msg) and the server's defaults end up in
/// the commit as git reads it (`git log --format`), and bad values are refused with EINVAL and a reason.
/// </summary>
public sealed class CommitMetadataTests : DataKitTestBase
{
    private const string Format = "--format=%an|%ae|%aI|%cn|%ce";

    [Fact]
    public async Task TheTransactionsAuthorCommitterAndDateAreWhatGitReads()
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "a", "1");
        await Echo(C, $"{tx}/author", "Ada Lovelace <ada@example.com>\n");
        await Echo(C, $"{tx}/committer", "Bot <bot@example.com>");
        await Echo(C, $"{tx}/date", "2001-02-03T04:05:06+01:30\n");
        Assert.Equal("Ada Lovelace <ada@example.com>\n", await Read(C, $"{tx}/author"));
        await Commit(C, tx, "dated");
        Assert.Equal("Ada Lovelace|ada@example.com|2001-02-03T04:05:06+01:30|Bot|bot@example.com", Git("log", "-1", Format, "master").Trim());

        // git's raw "SECONDS +HHMM" (with and without '@'), and RFC 3339 with a fraction (dropped) and 'Z'.
        foreach ((string date, string iso) in new[]
                 {
                     ("981169506 -0700", "2001-02-02T20:05:06-07:00"),
                     ("@0 +0000", "1970-01-01T00:00:00+00:00"),
                     ("2026-12-07 11:45:00.123456789Z", "2026-12-07T11:45:00+00:00"),
                 })
        {
            tx = await Begin(C, "master");
            await Echo(C, $"{tx}/date", date);
            await Commit(C, tx, date);
            Assert.Equal(iso, Git("log", "-1", "--format=%aI", "master").Trim());
        }

        // Empty files: the defaults (the original's identity; the date is now, committer date too).
        long before = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        tx = await Begin(C, "master");
        await Commit(C, tx, "plain");
        string[] plain = Git("log", "-1", "--format=%an|%ae|%cn|%at|%ct", "master").Trim().Split('|');
        Assert.Equal(["datakit", "datakit@mobyproject.org", "datakit"], plain[..3]);
        Assert.InRange(long.Parse(plain[3], System.Globalization.CultureInfo.InvariantCulture), before - 1, before + 60);
        Assert.Equal(plain[3], plain[4]);
    }

    [Theory]
    [InlineData("author", "nobody", "author: expected \"Name <email>\" (got \"nobody\")")]
    [InlineData("author", " <a@b>", "author: the name is empty")]
    [InlineData("author", "Ada <>", "author: the email is empty")]
    [InlineData("committer", "A <b<c>", "committer: a name or email may not contain '<', '>' or control characters")]
    [InlineData("date", "2026-12-07T11:45:00", "date: the zone \"\" is not Z or +HH:MM")]
    [InlineData("date", "2026-02-30T11:45:00Z", "is not a real date and time")]
    [InlineData("date", "2026-12-31T23:59:60Z", "leap seconds")]
    [InlineData("date", "yesterday", "date: expected RFC 3339")]
    [InlineData("date", "1700000000 +1500", "date: the zone offset must be within ±14:00")]
    [InlineData("date", "99999999999999999999 +0000", "date: expected RFC 3339")]
    public async Task BadMetadataIsEinvalWithAReasonAndTheTransactionStaysOpen(string file, string value, string message)
    {
        string tx = await Begin(C, "master");
        await Create(C, $"{tx}/rw", "a", "1");
        await Echo(C, $"{tx}/msg", "m");
        await Echo(C, $"{tx}/{file}", value);
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => Echo(C, $"{tx}/ctl", "commit"));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Contains(message, e.Message, StringComparison.Ordinal);
        Assert.Equal("\n", await Read(C, "branch/master/head"));

        // Fixed, the same transaction commits.
        await Echo(C, $"{tx}/{file}", "");
        await Echo(C, $"{tx}/ctl", "commit");
        Assert.Equal("m", Git("log", "-1", "--format=%s", "master").Trim());
    }

    [Fact]
    public async Task AHugeAuthorIsRefusedWithoutEchoingIt()
    {
        string tx = await Begin(C, "master");
        await Echo(C, $"{tx}/author", new string('x', 100_000) + " <a@b>");
        NinePException e = await Assert.ThrowsAsync<NinePException>(() => Echo(C, $"{tx}/ctl", "commit"));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.StartsWith($"author: longer than {CommitMetadata.MaxLength} characters", e.Message, StringComparison.Ordinal);
        Assert.True(e.Message.Length < 200, e.Message);
    }

    [Fact]
    public async Task TheServersDefaultsApplyWhereTheTransactionSaysNothing()
    {
        string git = GitDir + "-defaults";
        CommitMetadata.TryParseIdentity("Ops Team <ops@example.com>", out LibGit2Sharp.Identity? ops, out _);
        CommitMetadata.TryParseIdentity("CI <ci@example.com>", out LibGit2Sharp.Identity? ci, out _);
        try
        {
            await using (var server = new DataKitServer(git, settings: new DataKitOptions { Author = ops }))
            {
                await using NinePClient c = await ConnectTo(server);
                string tx = await Begin(c, "master");
                await Commit(c, tx, "one");
                tx = await Begin(c, "master");
                await Echo(c, $"{tx}/author", "Ada <ada@example.com>");
                await Commit(c, tx, "two");
            }
            await using (var server = new DataKitServer(git, settings: new DataKitOptions { Author = ops, Committer = ci }))
            {
                await using NinePClient c = await ConnectTo(server);
                string tx = await Begin(c, "master");
                await Commit(c, tx, "three");
            }
            var (code, stdout, stderr) = await ProcessRunner.RunBinaryAsync("git", ["-C", git, "log", "--format=%s|%an|%ae|%cn|%ce", "master"]);
            Assert.True(code == 0, stderr);
            string log = System.Text.Encoding.UTF8.GetString(stdout);
            Assert.Equal(
                [
                    "three|Ops Team|ops@example.com|CI|ci@example.com",
                    "two|Ada|ada@example.com|Ops Team|ops@example.com",
                    "one|Ops Team|ops@example.com|Ops Team|ops@example.com",
                ],
                log.Trim().Split('\n'));
        }
        finally
        {
            if (Directory.Exists(git))
            {
                Directory.Delete(git, true);
            }
        }
    }

    /// <summary>
    /// The parsers take client bytes: whatever the text, they answer true or false with a reason and never throw.
    /// Mutations of valid values (and random text over the characters that matter) reach every branch of both.
    /// </summary>
    [Fact]
    public void TheParsersNeverThrowOnArbitraryText()
    {
        const string alphabet = "0123456789-:Tt Zz+@<>.\n\tAa\u00e9\0";
        string[] seeds = ["2026-12-07T11:45:00Z", "2026-12-07 11:45:00.123+01:00", "1700000000 +0100", "@0 -1400", "Ada <ada@example.com>"];
        var random = new Random(5);
        int accepted = 0;
        for (int i = 0; i < 50_000; i++)
        {
            char[] text = i % 2 == 0 ? seeds[random.Next(seeds.Length)].ToCharArray() : new char[random.Next(0, 40)];
            int edits = i % 2 == 0 ? random.Next(1, 4) : text.Length;
            for (int e = 0; e < edits && text.Length > 0; e++)
            {
                text[random.Next(text.Length)] = alphabet[random.Next(alphabet.Length)];
            }
            string value = new(text[..random.Next(text.Length + 1)]);
            if (CommitMetadata.TryParseDate(value, out _, out string dateError))
            {
                accepted++;
            }
            else
            {
                Assert.NotEqual("", dateError);
            }
            if (!CommitMetadata.TryParseIdentity(value, out _, out string idError))
            {
                Assert.NotEqual("", idError);
            }
        }
        Assert.True(accepted > 100, $"only {accepted} mutated dates parsed: the mutations do not reach the success paths");
    }

    private static Task<NinePClient> ConnectTo(DataKitServer server)
    {
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var ep = (IPEndPoint)server.Listen(any!);
        return NinePClient.ConnectAsync(new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}"));
    }
}
