using System.Diagnostics;
using System.Net;
using System.Text;
using Kit.NineP.Client;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.DataKit.Tests;

/// <summary>A real DataKit server on a fresh git repository, on a loopback TCP port, per test class instance.</summary>
public class DataKitTestBase : IAsyncLifetime
{
    protected string GitDir { get; } = Path.Combine(Path.GetTempPath(), "kit-datakit-" + Guid.NewGuid().ToString("N")[..12]);
    protected DataKitServer Server { get; private set; } = null!;
    protected ListenAddress Address { get; private set; } = null!;
    protected NinePClient C { get; private set; } = null!;

    /// <summary>The server's settings; a test class overrides this to try small limits.</summary>
    protected virtual DataKitOptions Options => DataKitOptions.Default;

    public virtual async ValueTask InitializeAsync()
    {
        Server = new DataKitServer(GitDir, settings: Options);
        ListenAddress.TryParse("tcp://127.0.0.1:0", out ListenAddress? any, out _);
        var ep = (IPEndPoint)Server.Listen(any!);
        Address = new ListenAddress(ep, $"tcp://127.0.0.1:{ep.Port}");
        C = await Connect();
    }

    protected Task<NinePClient> Connect(Dialect dialect = Dialect.Unix) => NinePClient.ConnectAsync(Address, dialect);

    public virtual async ValueTask DisposeAsync()
    {
        await C.DisposeAsync();
        await Server.DisposeAsync();
        try
        {
            Directory.Delete(GitDir, true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    protected static Task<string> Read(NinePClient c, string path) => c.ReadTextAsync(path);

    /// <summary>As `echo text > path`: wstat length 0, then one write.</summary>
    protected static Task Echo(NinePClient c, string path, string text) => c.WriteTextAsync(path, text);

    protected static Task Create(NinePClient c, string dir, string name, string content, bool exec = false) =>
        c.CreateFileAsync(dir, name, Encoding.UTF8.GetBytes(content), exec ? 0x1EDu : 0x1A4u);

    protected static async Task<string> ErrorOf(Func<Task> action)
    {
        NinePException e = await Assert.ThrowsAsync<NinePException>(action);
        return e.Message;
    }

    /// <summary>Opens a transaction on <paramref name="branch"/>; returns its path.</summary>
    protected static async Task<string> Begin(NinePClient c, string branch, string name = "t")
    {
        await c.MkdirAsync("branch", branch);
        await c.MkdirAsync($"branch/{branch}/transactions", name);
        return $"branch/{branch}/transactions/{name}";
    }

    protected static async Task<string> Commit(NinePClient c, string tx, string message)
    {
        string branch = tx.Split('/')[1];
        await Echo(c, $"{tx}/msg", message);
        await Echo(c, $"{tx}/ctl", "commit");
        return (await Read(c, $"branch/{branch}/head")).Trim();
    }

    protected string Git(params string[] args)
    {
        var psi = new ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("-C");
        psi.ArgumentList.Add(GitDir);
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment["GIT_AUTHOR_NAME"] = "test";
        psi.Environment["GIT_AUTHOR_EMAIL"] = "test@example.com";
        psi.Environment["GIT_COMMITTER_NAME"] = "test";
        psi.Environment["GIT_COMMITTER_EMAIL"] = "test@example.com";
        using Process p = Process.Start(psi)!;
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"git {string.Join(' ', args)}: {stderr.Result}");
        return stdout;
    }
}
