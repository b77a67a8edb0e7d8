using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Kit.Testing;

/// <summary>
/// Real git servers on loopback for remote tests, each serving the repositories under one private directory:
/// <c>git daemon</c> (git://), <c>git http-backend</c> behind a small CGI bridge (smart HTTP), and OpenSSH's sshd with
/// key authentication (ssh://). All listen on 127.0.0.1 only, on ports the kernel picked, and die with Dispose.
/// </summary>
public static class GitServers
{
    /// <summary>Waits until something accepts TCP connections on 127.0.0.1:<paramref name="port"/>.</summary>
    public static async Task WaitForPortAsync(int port, TimeSpan timeout, RunningProcess? server = null)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                using var s = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await s.ConnectAsync(IPAddress.Loopback, port);
                return;
            }
            catch (SocketException) when (clock.Elapsed < timeout && server?.Process.HasExited != true)
            {
                await Task.Delay(50);
            }
            catch (SocketException e)
            {
                throw new TimeoutException($"nothing listens on 127.0.0.1:{port}: {e.Message}\n{server?.StandardError}");
            }
        }
    }

    /// <summary>Runs git (no shell) and returns its trimmed standard output; throws with git's output on failure.</summary>
    public static string Git(params string[] args)
    {
        ProcessResult r = ProcessRunner.RunAsync("git", args, TimeSpan.FromSeconds(60), environment: new Dictionary<string, string?>
        {
            ["GIT_AUTHOR_NAME"] = "test", ["GIT_AUTHOR_EMAIL"] = "test@example.com",
            ["GIT_COMMITTER_NAME"] = "test", ["GIT_COMMITTER_EMAIL"] = "test@example.com",
            ["GIT_CONFIG_NOSYSTEM"] = "1", ["GIT_CONFIG_GLOBAL"] = "/dev/null",
        }).GetAwaiter().GetResult().EnsureSuccess();
        return r.StandardOutput.Trim();
    }

    /// <summary>`git daemon` serving <paramref name="root"/> (--base-path, --export-all) with push enabled.</summary>
    public static async Task<GitDaemon> StartDaemonAsync(string root)
    {
        int port = LoopbackPort.Free();
        RunningProcess p = ProcessRunner.Start("git",
        [
            "daemon", "--reuseaddr", "--listen=127.0.0.1", $"--port={port}", $"--base-path={root}", "--export-all",
            "--enable=receive-pack", "--informative-errors", root,
        ]);
        await WaitForPortAsync(port, TimeSpan.FromSeconds(20), p);
        return new GitDaemon(p, port);
    }

    /// <summary>sshd on a loopback port with fresh host and client keys in <paramref name="dir"/> (a private directory).</summary>
    public static async Task<SshServer> StartSshAsync(string dir)
    {
        string hostKey = Path.Combine(dir, "ssh_host_ed25519_key");
        string clientKey = Path.Combine(dir, "id_ed25519");
        (await ProcessRunner.RunAsync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", hostKey])).EnsureSuccess();
        (await ProcessRunner.RunAsync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", clientKey])).EnsureSuccess();
        string authorized = Path.Combine(dir, "authorized_keys");
        File.Copy(clientKey + ".pub", authorized);
        int port = LoopbackPort.Free();
        string config = Path.Combine(dir, "sshd_config");
        File.WriteAllText(config, string.Join('\n',
            $"Port {port}",
            "ListenAddress 127.0.0.1",
            $"HostKey {hostKey}",
            $"AuthorizedKeysFile {authorized}",
            $"PidFile {Path.Combine(dir, "sshd.pid")}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            // The keys live in a private temp directory under /tmp (1777), which StrictModes would refuse.
            "StrictModes no",
            "UsePAM no",
            "") + "\n");
        // OpenSSH needs its privilege-separation directory; Debian's package makes it at boot through systemd, which
        // a CI container does not run. Created if missing (as the package would), never removed.
        Directory.CreateDirectory("/run/sshd");
        RunningProcess p = ProcessRunner.Start("/usr/sbin/sshd", ["-D", "-e", "-f", config]);
        await WaitForPortAsync(port, TimeSpan.FromSeconds(20), p);
        string knownHosts = Path.Combine(dir, "known_hosts");
        File.WriteAllText(knownHosts, $"[127.0.0.1]:{port} {File.ReadAllText(hostKey + ".pub").Trim()}\n");
        string command = $"ssh -F /dev/null -i {clientKey} -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
            + $"-o UserKnownHostsFile={knownHosts} -o GlobalKnownHostsFile=/dev/null";
        return new SshServer(p, port, command);
    }

    /// <summary>`git http-backend` for the repositories under <paramref name="root"/>, push enabled, behind a loopback web server.</summary>
    public static GitHttpServer StartHttp(string root) => new(root);
}

public sealed class GitDaemon(RunningProcess process, int port) : IDisposable
{
    public int Port { get; } = port;

    public string Url(string repo) => $"git://127.0.0.1:{Port}/{repo}";

    public void Dispose() => process.Dispose();
}

public sealed class SshServer(RunningProcess process, int port, string sshCommand) : IDisposable
{
    public int Port { get; } = port;

    /// <summary>GIT_SSH_COMMAND for git: the test's client key, and only the test's known_hosts.</summary>
    public string SshCommand { get; } = sshCommand;

    public string Url(string path) => $"ssh://{Environment.UserName}@127.0.0.1:{Port}{path}";

    public void Dispose() => process.Dispose();
}

/// <summary>
/// Smart HTTP: a loopback <see cref="HttpListener"/> that runs <c>git http-backend</c> as a CGI program (RFC 3875)
/// for each request, with GIT_PROJECT_ROOT the served directory and http.receivepack on (anonymous push).
/// </summary>
public sealed class GitHttpServer : IDisposable
{
    private readonly HttpListener _listener = new();
    private readonly string _root;
    private readonly Task _loop;

    internal GitHttpServer(string root)
    {
        _root = root;
        Port = LoopbackPort.Free();
        _listener.Prefixes.Add($"http://127.0.0.1:{Port}/");
        _listener.Start();
        _loop = Task.Run(ServeAsync);
    }

    public int Port { get; }

    public string Url(string repo) => $"http://127.0.0.1:{Port}/{repo}";

    private async Task ServeAsync()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext context;
            try
            {
                context = await _listener.GetContextAsync();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
                return;
            }
            _ = Task.Run(() => HandleAsync(context));
        }
    }

    private async Task HandleAsync(HttpListenerContext context)
    {
        HttpListenerRequest request = context.Request;
        HttpListenerResponse response = context.Response;
        try
        {
            var psi = new ProcessStartInfo("git", ["-c", "http.receivepack=true", "http-backend"])
            {
                UseShellExecute = false,
                RedirectStandardInput = true,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            psi.Environment["GIT_PROJECT_ROOT"] = _root;
            psi.Environment["GIT_HTTP_EXPORT_ALL"] = "1";
            psi.Environment["GIT_CONFIG_NOSYSTEM"] = "1";
            psi.Environment["GIT_CONFIG_GLOBAL"] = "/dev/null";
            psi.Environment["REQUEST_METHOD"] = request.HttpMethod;
            psi.Environment["PATH_INFO"] = request.Url!.AbsolutePath;
            psi.Environment["QUERY_STRING"] = request.Url.Query.TrimStart('?');
            psi.Environment["CONTENT_TYPE"] = request.ContentType ?? "";
            psi.Environment["REMOTE_ADDR"] = "127.0.0.1";
            if (request.ContentLength64 >= 0)
            {
                psi.Environment["CONTENT_LENGTH"] = request.ContentLength64.ToString(System.Globalization.CultureInfo.InvariantCulture);
            }
            foreach (string? name in request.Headers.AllKeys)
            {
                if (name is not null)
                {
                    psi.Environment["HTTP_" + name.ToUpperInvariant().Replace('-', '_')] = request.Headers[name];
                }
            }
            if (request.Headers["Git-Protocol"] is string protocol)
            {
                psi.Environment["GIT_PROTOCOL"] = protocol;
            }
            using Process p = Process.Start(psi)!;
            Task input = Task.Run(async () =>
            {
                await request.InputStream.CopyToAsync(p.StandardInput.BaseStream);
                p.StandardInput.Close();
            });
            Task<string> errors = p.StandardError.ReadToEndAsync();
            Stream output = p.StandardOutput.BaseStream;
            // CGI response: header lines up to a blank line, "Status: 404 Not Found" for anything but 200.
            var header = new List<byte>();
            while (true)
            {
                int b = output.ReadByte();
                if (b < 0)
                {
                    break;
                }
                header.Add((byte)b);
                int n = header.Count;
                if ((n >= 2 && header[n - 1] == '\n' && header[n - 2] == '\n') || (n >= 4 && header[n - 1] == '\n' && header[n - 2] == '\r' && header[n - 3] == '\n'))
                {
                    break;
                }
            }
            response.StatusCode = 200;
            foreach (string line in Encoding.ASCII.GetString(header.ToArray()).Split('\n', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            {
                int colon = line.IndexOf(':');
                if (colon <= 0)
                {
                    continue;
                }
                string name = line[..colon].Trim();
                string value = line[(colon + 1)..].Trim();
                if (name.Equals("Status", StringComparison.OrdinalIgnoreCase))
                {
                    response.StatusCode = int.Parse(value.Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
                }
                else if (name.Equals("Content-Type", StringComparison.OrdinalIgnoreCase))
                {
                    response.ContentType = value;
                }
                else if (!name.Equals("Content-Length", StringComparison.OrdinalIgnoreCase))
                {
                    response.Headers[name] = value;
                }
            }
            response.SendChunked = true;
            await output.CopyToAsync(response.OutputStream);
            await input;
            await p.WaitForExitAsync();
            await errors;
        }
        catch (Exception e) when (e is IOException or HttpListenerException or InvalidOperationException)
        {
            // The client went away; nothing to answer.
        }
        finally
        {
            try
            {
                response.Close();
            }
            catch (Exception e) when (e is HttpListenerException or ObjectDisposedException or InvalidOperationException)
            {
            }
        }
    }

    public void Dispose()
    {
        _listener.Close();
        _loop.Wait(TimeSpan.FromSeconds(5));
    }
}

/// <summary>
/// A TCP listener on 127.0.0.1 that accepts every connection and never writes a byte: the "hung remote". It counts
/// connections and notices when the client side closes (the git process was killed).
/// </summary>
public sealed class SilentListener : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly CancellationTokenSource _stop = new();
    private int _accepted;
    private int _closed;

    public SilentListener()
    {
        _listener.Start();
        _ = AcceptAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public int Accepted => Volatile.Read(ref _accepted);

    /// <summary>Connections whose client closed (read end-of-stream or a reset).</summary>
    public int Closed => Volatile.Read(ref _closed);

    private async Task AcceptAsync()
    {
        try
        {
            while (true)
            {
                Socket s = await _listener.AcceptSocketAsync(_stop.Token);
                Interlocked.Increment(ref _accepted);
                _ = DrainAsync(s);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    private async Task DrainAsync(Socket s)
    {
        using (s)
        {
            byte[] buffer = new byte[4096];
            try
            {
                while (await s.ReceiveAsync(buffer, SocketFlags.None, _stop.Token) > 0)
                {
                }
            }
            catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                if (_stop.IsCancellationRequested)
                {
                    return;
                }
            }
            Interlocked.Increment(ref _closed);
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Stop();
    }
}
