using System.Buffers.Binary;
using Kit.DataKit.Fs;
using Kit.DataKit.Store;
using Kit.HyperKit.HostFs;
using Kit.NineP.Protocol;
using Kit.NineP.Server;
using Kit.NineP.Vfs;
using Microsoft.Extensions.Logging;

namespace Kit.Fuzz;

internal static class NinePTargets
{
    /// <summary>
    /// ninep-codec: input[0] picks the dialect (low two bits) and whether the size field is patched to the frame's
    /// length (bit 7 clear) or left as the fuzzer wrote it; the rest is one frame. A decoded message is encoded again
    /// and that encoding must decode. The stat and directory-entry codecs see the body too.
    /// </summary>
    public static void Codec(byte[] input)
    {
        if (input.Length == 0)
        {
            return;
        }
        var dialect = (Dialect)((input[0] & 3) % 3);
        byte[] frame = input.AsSpan(1).ToArray();
        if ((input[0] & 0x80) == 0 && frame.Length >= 4)
        {
            BinaryPrimitives.WriteUInt32LittleEndian(frame, (uint)frame.Length);
        }
        FcallCodec.TryReadHeader(frame, out _, out MessageType type, out _);
        _ = FcallCodec.IsKnown(type);
        if (FcallCodec.TryDecode(frame, dialect, out Fcall decoded, out _))
        {
            // Strings decode losslessly (NineString), so a re-encoding is as long as the input; the buffer is generous anyway.
            byte[] again = new byte[(frame.Length * 4) + 256];
            int n = FcallCodec.Encode(decoded, dialect, again);
            if (n > 0 && !FcallCodec.TryDecode(again.AsSpan(0, n), dialect, out _, out string reason))
            {
                throw new FuzzFindingException($"{decoded.Type} re-encoded by FcallCodec does not decode: {reason}");
            }
        }
        ReadOnlySpan<byte> body = frame.AsSpan(Math.Min(frame.Length, P9.HeaderSize));
        DirEntryCodec.TryParse(body, []);
        DirEntryCodec.TryParseStats(body, dialect, []);
    }

    /// <summary>
    /// ninep-datakit: a whole NinePConnection over a DataKit tree in a fresh temporary git store, fed the input's
    /// records (<see cref="FuzzTargets.Records"/>: each is type[1] tag[2] body, the size field is added here). Replies
    /// are discarded. A handler exception that the connection turned into EIO is a finding too.
    /// </summary>
    public static void DataKitSession(byte[] input)
    {
        string dir = Path.Combine(Path.GetTempPath(), $"kit-fuzz-datakit-{Environment.ProcessId}");
        DeleteTree(dir);
        try
        {
            using GitStore store = GitStore.Open(dir);
            var logger = new FindingLogger();
            var stream = new ScriptStream(Frames(input));
            var connection = new NinePConnection(stream, new DataKitSession(store), new NinePServerOptions(), logger);
            // Handlers run inline until they first wait; the only waits here are on the (cancelled at end of input)
            // connection itself, so this returns once the input is consumed.
            if (!connection.RunAsync(CancellationToken.None).Wait(TimeSpan.FromSeconds(30)))
            {
                throw new FuzzFindingException("DataKit 9P session did not finish within 30 s of end of input");
            }
            logger.ThrowIfFailed();
        }
        finally
        {
            DeleteTree(dir);
        }
    }

    /// <summary>
    /// ninep-hostfs: HyperKit's host-directory server (one <see cref="HostFsSession"/>, untrusted guest) over a
    /// fresh temporary directory with a file, a subdirectory and a symlink pointing out, fed the input's records.
    /// An exception the session turned into EIO is a finding.
    /// </summary>
    public static void HostFsSession(byte[] input)
    {
        // The export and, beside it (not inside), a canary directory that a symlink in the export points to. An
        // escape from the export can reach only the canary, and is itself a finding. Never a link to "/": a cleanup
        // or an escape must not be able to reach the host's files.
        string top = Path.Combine(Path.GetTempPath(), $"kit-fuzz-hostfs-{Environment.ProcessId}");
        string export = Path.Combine(top, "export"), canary = Path.Combine(top, "canary");
        DeleteTree(top);
        Directory.CreateDirectory(Path.Combine(export, "sub"));
        Directory.CreateDirectory(canary);
        File.WriteAllText(Path.Combine(export, "file"), "hello\n");
        File.WriteAllText(Path.Combine(canary, "secret"), "canary\n");
        File.CreateSymbolicLink(Path.Combine(export, "out"), canary);
        Exception? bug = null;
        try
        {
            using (var session = new HostFsSession(new HostFsOptions(export) { MaxFids = 64, MaxDescriptors = 32 }))
            {
                session.InternalError = e => bug ??= e;
                byte[] reply = new byte[1024 * 1024 + 8192];
                foreach (ReadOnlyMemory<byte> frame in Frames(input))
                {
                    session.Handle(frame, reply.AsMemory(0, (int)Math.Max(session.MessageSize, 8192)));
                    if (bug is not null)
                    {
                        throw new FuzzFindingException($"HostFsSession turned an exception into EIO: {bug.GetType().Name}: {bug.Message}", bug);
                    }
                }
            }
            string[] left = Directory.GetFileSystemEntries(canary);
            if (left.Length != 1 || File.ReadAllText(Path.Combine(canary, "secret")) != "canary\n")
            {
                throw new FuzzFindingException("the guest changed a directory outside the export (through the symlink)");
            }
        }
        finally
        {
            try
            {
                DeleteTree(top);
            }
            catch (IOException)
            {
                // A name that is not UTF-8 (the guest may create one: finding 10) cannot be named through .NET's
                // file APIs; rm(1) works on bytes and, like DeleteTree, removes a symlink without entering it.
                using var rm = System.Diagnostics.Process.Start("rm", ["-rf", "--one-file-system", "--", top]);
                rm.WaitForExit();
            }
        }
    }

    /// <summary>Whole 9P frames from the input's records: size[4] prepended to each.</summary>
    private static IEnumerable<ReadOnlyMemory<byte>> Frames(byte[] input)
    {
        foreach (ReadOnlyMemory<byte> r in FuzzTargets.Records(input))
        {
            byte[] f = new byte[r.Length + 4];
            BinaryPrimitives.WriteUInt32LittleEndian(f, (uint)f.Length);
            r.Span.CopyTo(f.AsSpan(4));
            yield return f;
        }
    }

    /// <summary>
    /// Deletes a tree a fuzzed session made, without ever following a symbolic link (a link is removed, not entered).
    /// Directories are made writable first so an unprivileged run can delete what a chmod 0 left behind.
    /// </summary>
    internal static void DeleteTree(string path)
    {
        var info = new FileInfo(path);
        if (!info.Exists && !Directory.Exists(path) && info.LinkTarget is null)
        {
            return;
        }
        if (info.LinkTarget is null && (info.Attributes & FileAttributes.Directory) != 0)
        {
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
            foreach (string child in Directory.EnumerateFileSystemEntries(path))
            {
                DeleteTree(child);
            }
            Directory.Delete(path);
        }
        else
        {
            File.Delete(path);
        }
    }
}

/// <summary>
/// A stream whose reads return the given frames in order and then end; writes are discarded. The 9P connection reads
/// header and body with ReadExactly, so a frame may be read in any number of pieces.
/// </summary>
internal sealed class ScriptStream(IEnumerable<ReadOnlyMemory<byte>> frames) : Stream
{
    private readonly IEnumerator<ReadOnlyMemory<byte>> _frames = frames.GetEnumerator();
    private ReadOnlyMemory<byte> _current;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        while (_current.IsEmpty)
        {
            if (!_frames.MoveNext())
            {
                return 0;
            }
            _current = _frames.Current;
        }
        int n = Math.Min(buffer.Length, _current.Length);
        _current.Span[..n].CopyTo(buffer);
        _current = _current[n..];
        return n;
    }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        ValueTask.FromResult(Read(buffer.Span));

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        Task.FromResult(Read(buffer.AsSpan(offset, count)));

    public override void Write(byte[] buffer, int offset, int count)
    {
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) => ValueTask.CompletedTask;

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => Task.CompletedTask;

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}

/// <summary>Records the first error logged with an exception (a handler failure the server swallowed).</summary>
internal sealed class FindingLogger : ILogger
{
    private Exception? _first;
    private string? _message;

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Error;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (logLevel >= LogLevel.Error && exception is not null)
        {
            lock (this)
            {
                _first ??= exception;
                _message ??= formatter(state, exception);
            }
        }
    }

    public void ThrowIfFailed()
    {
        if (_first is not null)
        {
            throw new FuzzFindingException($"{_message}: {_first.GetType().Name}: {_first.Message}", _first);
        }
    }
}
