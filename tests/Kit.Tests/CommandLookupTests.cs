using Kit.Cli.Commands;

namespace Kit.Tests;

/// <summary>execvp's lookup, decided before `kit net run` sets anything up (126/127 as docker run and sh give).</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class CommandLookupTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("kit-lookup-");

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public void AnExecutableInPathIsFound() => Assert.Null(CommandLookup.Check("sh", "/nonexistent:/bin"));

    [Fact]
    public void AMissingNameIs127() => Assert.Equal(127, CommandLookup.Check("sh", _dir.FullName)?.ExitCode);

    [Fact]
    public void AFileWithoutExecuteBitsIs126ButALaterExecutableWins()
    {
        string plain = Path.Combine(_dir.FullName, "sh");
        File.WriteAllText(plain, "");
        File.SetUnixFileMode(plain, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        Assert.Equal(126, CommandLookup.Check("sh", _dir.FullName)?.ExitCode);
        Assert.Null(CommandLookup.Check("sh", $"{_dir.FullName}:/bin"));
    }

    [Theory]
    [InlineData("/bin/sh", null)]
    [InlineData("/etc", 126)]
    [InlineData("/nonexistent/x", 127)]
    [InlineData("", 127)]
    public void APathIsTakenAsIs(string name, int? code) => Assert.Equal(code, CommandLookup.Check(name, "/bin")?.ExitCode);
}
