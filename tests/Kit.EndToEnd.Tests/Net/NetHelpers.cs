using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Kit.EndToEnd.Tests.Net;

/// <summary>
/// Minimal helpers for the VPNKit real-client tests (to be unified with the shared harness later): run the built
/// `kit` CLI, and tiny loopback servers (DNS, HTTP) so no test traffic ever leaves the machine.
/// </summary>
internal static class KitCli
{
    public static string Path
    {
        get
        {
            string? dir = AppContext.BaseDirectory;
            while (dir is not null && !File.Exists(System.IO.Path.Combine(dir, "Kit.slnx")))
            {
                dir = System.IO.Path.GetDirectoryName(dir);
            }
            Assert.NotNull(dir);
            string kit = System.IO.Path.Combine(dir!, "artifacts", "bin", "Kit", "release", "kit");
            Assert.True(File.Exists(kit), $"{kit} is missing: build with `dotnet build src/Kit -c Release`");
            return kit;
        }
    }

    /// <summary>Checks what these tests need (./test installs it); a missing piece fails loudly rather than skipping.</summary>
    public static void RequirePrerequisites()
    {
        Assert.True(Environment.UserName == "root" || File.ReadAllText("/proc/self/status").Contains("Uid:\t0\t", StringComparison.Ordinal),
            "kit net run tests need root (network namespaces and TAP)");
        foreach (string tool in new[] { "/usr/sbin/ip", "/usr/bin/busybox" })
        {
            Assert.True(File.Exists(tool) || File.Exists(tool.Replace("/usr", "", StringComparison.Ordinal)), $"{tool} is missing (./test installs it)");
        }
    }

    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
    }

    /// <summary>Runs `kit net run OPTIONS -- sh -c SCRIPT` and waits (bounded).</summary>
    public static async Task<Result> NetRunAsync(string[] options, string script, TimeSpan timeout)
    {
        var start = new ProcessStartInfo(Path) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("net");
        start.ArgumentList.Add("run");
        foreach (string o in options)
        {
            start.ArgumentList.Add(o);
        }
        start.ArgumentList.Add("--");
        start.ArgumentList.Add("sh");
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(script);
        using Process p = Process.Start(start)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await p.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            p.Kill(entireProcessTree: true);
            await p.WaitForExitAsync();
            Assert.Fail($"kit net run timed out after {timeout}:\n{await stdout}\n{await stderr}");
        }
        return new Result(p.ExitCode, await stdout, await stderr);
    }
}

/// <summary>
/// A tiny authoritative DNS server on 127.0.0.1 (UDP): answers A for the names it knows, NXDOMAIN for the rest, and
/// counts queries so tests can prove the gateway forwarded them.
/// </summary>
internal sealed class TinyDns : IDisposable
{
    private readonly UdpClient _udp = new(new IPEndPoint(IPAddress.Loopback, 0));
    private readonly Dictionary<string, IPAddress> _names;
    private readonly CancellationTokenSource _stop = new();
    private int _queries;

    public TinyDns(Dictionary<string, IPAddress> names)
    {
        _names = names;
        _ = ServeAsync();
    }

    public IPEndPoint EndPoint => (IPEndPoint)_udp.Client.LocalEndPoint!;
    public int Queries => Volatile.Read(ref _queries);

    private async Task ServeAsync()
    {
        try
        {
            while (!_stop.IsCancellationRequested)
            {
                UdpReceiveResult r = await _udp.ReceiveAsync(_stop.Token);
                Interlocked.Increment(ref _queries);
                byte[]? reply = Answer(r.Buffer);
                if (reply is not null)
                {
                    await _udp.SendAsync(reply, r.RemoteEndPoint, _stop.Token);
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    private byte[]? Answer(byte[] q)
    {
        if (q.Length < 12)
        {
            return null;
        }
        int i = 12;
        var name = new StringBuilder();
        while (i < q.Length && q[i] != 0)
        {
            int len = q[i];
            if (name.Length > 0)
            {
                name.Append('.');
            }
            name.Append(Encoding.ASCII.GetString(q, i + 1, Math.Min(len, q.Length - i - 1)));
            i += len + 1;
        }
        int end = i + 5;
        if (end > q.Length)
        {
            return null;
        }
        ushort type = BinaryPrimitives.ReadUInt16BigEndian(q.AsSpan(i + 1));
        bool known = _names.TryGetValue(name.ToString().ToLowerInvariant(), out IPAddress? ip);
        bool answer = known && type == 1;
        byte[] r = new byte[end + (answer ? 16 : 0)];
        q.AsSpan(0, end).CopyTo(r);
        r[2] = (byte)(0x84 | (q[2] & 1));
        r[3] = (byte)(known ? 0x80 : 0x83); // RA, RCODE 3 = NXDOMAIN.
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(6), (ushort)(answer ? 1 : 0));
        r[8] = r[9] = r[10] = r[11] = 0;
        if (answer)
        {
            Span<byte> a = r.AsSpan(end);
            BinaryPrimitives.WriteUInt16BigEndian(a, 0xC00C);
            BinaryPrimitives.WriteUInt16BigEndian(a.Slice(2), 1);
            BinaryPrimitives.WriteUInt16BigEndian(a.Slice(4), 1);
            BinaryPrimitives.WriteUInt32BigEndian(a.Slice(6), 30);
            BinaryPrimitives.WriteUInt16BigEndian(a.Slice(10), 4);
            ip!.GetAddressBytes().CopyTo(a.Slice(12));
        }
        return r;
    }

    public void Dispose()
    {
        _stop.Cancel();
        _udp.Dispose();
    }
}

/// <summary>A one-page HTTP/1.0 server on 127.0.0.1.</summary>
internal sealed class TinyHttp : IDisposable
{
    private readonly TcpListener _listener = new(IPAddress.Loopback, 0);
    private readonly byte[] _response;

    public TinyHttp(string body)
    {
        _response = Encoding.ASCII.GetBytes($"HTTP/1.0 200 OK\r\nContent-Length: {body.Length}\r\nContent-Type: text/plain\r\n\r\n{body}");
        _listener.Start();
        _ = ServeAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    private async Task ServeAsync()
    {
        try
        {
            while (true)
            {
                TcpClient c = await _listener.AcceptTcpClientAsync();
                _ = Task.Run(async () =>
                {
                    using (c)
                    {
                        NetworkStream s = c.GetStream();
                        byte[] buf = new byte[4096];
                        int got = 0;
                        while (got < buf.Length)
                        {
                            int n = await s.ReadAsync(buf.AsMemory(got));
                            if (n == 0)
                            {
                                break;
                            }
                            got += n;
                            if (Encoding.ASCII.GetString(buf, 0, got).Contains("\r\n\r\n", StringComparison.Ordinal))
                            {
                                break;
                            }
                        }
                        await s.WriteAsync(_response);
                    }
                });
            }
        }
        catch (Exception e) when (e is ObjectDisposedException or SocketException or InvalidOperationException)
        {
        }
    }

    public void Dispose() => _listener.Stop();
}
