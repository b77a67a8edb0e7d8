namespace Kit.Testing;

/// <summary>Paths in the source tree and the build output, found from the running test assembly.</summary>
public static class RepoPaths
{
    private static readonly Lazy<string> s_root = new(FindRoot);

    /// <summary>The repository root: the nearest directory above the test binaries that holds Kit.slnx.</summary>
    public static string Root => s_root.Value;

    /// <summary>
    /// The output directory of another project built in the same configuration as the running tests
    /// (artifacts/bin/&lt;project&gt;/&lt;config&gt;/), e.g. <c>BuildOutput("Kit.KvmProbe")</c>.
    /// </summary>
    public static string BuildOutput(string projectName)
    {
        // AppContext.BaseDirectory is artifacts/bin/<this test project>/<config>/ (ArtifactsPath layout).
        var self = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
        string config = self.Name;
        string bin = self.Parent?.Parent?.FullName
            ?? throw new InvalidOperationException($"unexpected test output layout: {self.FullName}");
        string dir = Path.Combine(bin, projectName, config);
        if (!Directory.Exists(dir))
        {
            throw new InvalidOperationException($"{projectName} is not built: {dir} does not exist (build the test project, which references it)");
        }
        return dir;
    }

    private static string FindRoot()
    {
        for (DirectoryInfo? dir = new(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Kit.slnx")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"no Kit.slnx above {AppContext.BaseDirectory}");
    }
}
