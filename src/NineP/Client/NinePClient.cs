using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using Kit.NineP.Protocol;
using Kit.NineP.Server;

namespace Kit.NineP.Client;

internal sealed class WalkFailed : Exception
{
}

/// <summary>An Rerror or Rlerror from the server.</summary>
public sealed class NinePException(uint errno, string message) : Exception(message)
{
    public uint Errno { get; } = errno;
}

/// <summary>
/// A 9P client over one stream: many requests in flight (one tag each), cancellation through Tflush (flush(5)),
/// fids allocated from a bounded pool. Speaks 9P2000.u by default, the dialect DataKit's clients use, since it
/// carries the server's error texts.
/// </summary>
public sealed class NinePClient : IAsyncDisposable
{
    private readonly Stream _stream;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ConcurrentDictionary<ushort, TaskCompletionSource<Fcall>> _pending = new();
    private readonly ConcurrentQueue<uint> _freeFids = new();
    private readonly CancellationTokenSource _closed = new();
    private Task _reader = Task.CompletedTask;
    private volatile Exception? _failure;
    private int _nextTag;
    private int _nextFid;

    private NinePClient(Stream stream, Dialect dialect)
    {
        _stream = stream;
        Dialect = dialect;
    }

    public Dialect Dialect { get; private set; }
    public uint Msize { get; private set; }
    public uint RootFid { get; private set; }

    /// <summary>The largest Tread/Twrite payload for the negotiated msize.</summary>
    public int MaxPayload => (int)Msize - 24;

    public static async Task<NinePClient> ConnectAsync(ListenAddress address, Dialect dialect = Dialect.Unix, uint msize = 1024 * 1024, string aname = "", CancellationToken ct = default)
    {
        Socket socket = address.CreateSocket();
        try
        {
            await socket.ConnectAsync(address.EndPoint, ct).ConfigureAwait(false);
            if (!address.IsUnix)
            {
                socket.NoDelay = true;
            }
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        return await StartAsync(new NetworkStream(socket, ownsSocket: true), dialect, msize, aname, ct).ConfigureAwait(false);
    }

    public static async Task<NinePClient> StartAsync(Stream stream, Dialect dialect = Dialect.Unix, uint msize = 1024 * 1024, string aname = "", CancellationToken ct = default)
    {
        var client = new NinePClient(stream, dialect);
        try
        {
            await client.HandshakeAsync(msize, aname, ct).ConfigureAwait(false);
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return client;
    }

    private async Task HandshakeAsync(uint msize, string aname, CancellationToken ct)
    {
        string version = Dialect switch { Dialect.Linux => P9.VersionL, Dialect.Unix => P9.VersionU, _ => P9.Version2000 };
        // Tversion is sent and read synchronously: the reply decides how later frames decode.
        var t = new Fcall { Type = MessageType.Tversion, Tag = P9.NoTag, Msize = msize, Version = version };
        byte[] buffer = new byte[8192];
        int n = FcallCodec.Encode(t, Dialect, buffer);
        await _stream.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
        Fcall r = await ReadFrameAsync(ct).ConfigureAwait(false) ?? throw new IOException("connection closed during Tversion");
        if (r.Type != MessageType.Rversion || r.Version != version)
        {
            throw new NinePException(Errno.EPROTO, $"server does not speak {version} (answered {r.Version})");
        }
        Msize = Math.Min(r.Msize, msize);
        _reader = Task.Run(ReadLoopAsync);
        RootFid = AllocateFid();
        await RpcAsync(new Fcall { Type = MessageType.Tattach, Fid = RootFid, Afid = P9.NoFid, Uname = "kit", Aname = aname, NUname = 0 }, ct).ConfigureAwait(false);
    }

    private async Task<Fcall?> ReadFrameAsync(CancellationToken ct)
    {
        byte[] header = new byte[4];
        try
        {
            await _stream.ReadExactlyAsync(header, ct).ConfigureAwait(false);
        }
        catch (EndOfStreamException)
        {
            return null;
        }
        uint size = BinaryPrimitives.ReadUInt32LittleEndian(header);
        uint limit = Msize == 0 ? 1 << 16 : Msize;
        if (size < P9.HeaderSize || size > limit)
        {
            throw new IOException($"server sent a frame of {size} bytes");
        }
        byte[] frame = ArrayPool<byte>.Shared.Rent((int)size);
        try
        {
            header.CopyTo(frame, 0);
            await _stream.ReadExactlyAsync(frame.AsMemory(4, (int)size - 4), ct).ConfigureAwait(false);
            if (!FcallCodec.TryDecode(frame.AsSpan(0, (int)size), Dialect, out Fcall reply, out string reason))
            {
                throw new IOException($"undecodable reply: {reason}");
            }
            return reply;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(frame);
        }
    }

    private async Task ReadLoopAsync()
    {
        Exception failure = new IOException("connection closed");
        try
        {
            while (true)
            {
                Fcall? reply = await ReadFrameAsync(_closed.Token).ConfigureAwait(false);
                if (reply is null)
                {
                    break;
                }
                if (_pending.TryRemove(reply.Tag, out TaskCompletionSource<Fcall>? tcs))
                {
                    tcs.TrySetResult(reply);
                }
            }
        }
        catch (Exception e) when (e is IOException or OperationCanceledException or ObjectDisposedException)
        {
            failure = e is OperationCanceledException ? new IOException("client closed") : e;
        }
        _failure = failure;
        foreach (ushort tag in _pending.Keys)
        {
            if (_pending.TryRemove(tag, out TaskCompletionSource<Fcall>? tcs))
            {
                tcs.TrySetException(failure);
            }
        }
    }

    private ushort AllocateTag()
    {
        while (true)
        {
            ushort tag = (ushort)(Interlocked.Increment(ref _nextTag) & 0xFFFF);
            if (tag != P9.NoTag && !_pending.ContainsKey(tag))
            {
                return tag;
            }
        }
    }

    public uint AllocateFid() => _freeFids.TryDequeue(out uint fid) ? fid : (uint)Interlocked.Increment(ref _nextFid);

    private void ReleaseFid(uint fid) => _freeFids.Enqueue(fid);

    /// <summary>Sends a T-message and waits for its reply; errors become <see cref="NinePException"/>.</summary>
    public async Task<Fcall> RpcAsync(Fcall t, CancellationToken ct = default)
    {
        ushort tag = AllocateTag();
        t.Tag = tag;
        var tcs = new TaskCompletionSource<Fcall>(TaskCreationOptions.RunContinuationsAsynchronously);
        if (!_pending.TryAdd(tag, tcs))
        {
            throw new InvalidOperationException("tag collision");
        }
        if (_failure is Exception dead)
        {
            // The reader loop has ended: no reply can ever come.
            _pending.TryRemove(tag, out _);
            throw new IOException("connection closed", dead);
        }
        await SendAsync(t).ConfigureAwait(false);
        Fcall reply;
        try
        {
            reply = await tcs.Task.WaitAsync(ct).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ct.IsCancellationRequested)
        {
            // flush(5): after Rflush the old tag's reply will not come (or came before); either way it is free.
            await RpcAsync(new Fcall { Type = MessageType.Tflush, OldTag = tag }, CancellationToken.None).ConfigureAwait(false);
            _pending.TryRemove(tag, out _);
            throw;
        }
        if (reply.Type is MessageType.Rerror or MessageType.Rlerror)
        {
            throw new NinePException(reply.Errno, reply.Type == MessageType.Rerror ? reply.Ename : $"errno {reply.Errno}");
        }
        if (reply.Type != t.Type + 1)
        {
            throw new IOException($"expected R{t.Type.ToString()[1..]}, got {reply.Type}");
        }
        return reply;
    }

    private async Task SendAsync(Fcall t)
    {
        int size = (int)Math.Max(Msize, 8192);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            int n = FcallCodec.Encode(t, Dialect, buffer.AsSpan(0, size));
            if (n < 0)
            {
                throw new NinePException(Errno.EMSGSIZE, "message larger than msize");
            }
            await _writeLock.WaitAsync().ConfigureAwait(false);
            try
            {
                await _stream.WriteAsync(buffer.AsMemory(0, n)).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                throw new IOException("connection closed", e);
            }
            finally
            {
                _writeLock.Release();
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>Splits "a/b/c" into walk names; empty segments are dropped.</summary>
    public static string[] Split(string path) => path.Split('/', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>Walks from the root to <paramref name="path"/>; returns a new fid. Fails unless every name is found.</summary>
    public async Task<uint> WalkAsync(string path, CancellationToken ct = default) => await WalkAsync(RootFid, Split(path), ct).ConfigureAwait(false);

    public async Task<uint> WalkAsync(uint from, string[] names, CancellationToken ct = default)
    {
        uint fid = AllocateFid();
        uint current = from;
        int done = 0;
        try
        {
            do
            {
                string[] chunk = names.Skip(done).Take(P9.MaxWalkElements).ToArray();
                Fcall r = await RpcAsync(new Fcall { Type = MessageType.Twalk, Fid = current, NewFid = fid, Wnames = chunk }, ct).ConfigureAwait(false);
                if (r.Wqids.Length != chunk.Length)
                {
                    // A partial walk leaves newfid unset (walk(5)); if an earlier chunk set it, clunk it.
                    if (current == fid)
                    {
                        await ClunkAsync(fid).ConfigureAwait(false);
                    }
                    else
                    {
                        ReleaseFid(fid);
                    }
                    throw new WalkFailed();
                }
                current = fid;
                done += chunk.Length;
            }
            while (done < names.Length);
        }
        catch (WalkFailed)
        {
            throw new NinePException(Errno.ENOENT, "No such file or directory");
        }
        catch (NinePException) when (current != fid)
        {
            ReleaseFid(fid);
            throw;
        }
        return fid;
    }

    public async Task ClunkAsync(uint fid)
    {
        try
        {
            await RpcAsync(new Fcall { Type = MessageType.Tclunk, Fid = fid }).ConfigureAwait(false);
        }
        finally
        {
            ReleaseFid(fid);
        }
    }

    public async Task<Qid> OpenAsync(uint fid, byte mode, CancellationToken ct = default)
    {
        if (Dialect == Dialect.Linux)
        {
            uint flags = (mode & 3) switch { P9.OWRITE => P9.LOWronly, P9.ORDWR => P9.LORdwr, _ => 0u };
            if ((mode & P9.OTRUNC) != 0)
            {
                flags |= P9.LOTrunc;
            }
            return (await RpcAsync(new Fcall { Type = MessageType.Tlopen, Fid = fid, Flags = flags }, ct).ConfigureAwait(false)).Qid;
        }
        return (await RpcAsync(new Fcall { Type = MessageType.Topen, Fid = fid, Mode = mode }, ct).ConfigureAwait(false)).Qid;
    }

    /// <summary>Tcreate in directory fid <paramref name="dirFid"/>; the fid then refers to the new, opened file.</summary>
    public async Task<Qid> CreateAsync(uint dirFid, string name, uint perm, byte mode, string extension = "", CancellationToken ct = default) =>
        (await RpcAsync(new Fcall { Type = MessageType.Tcreate, Fid = dirFid, Name = name, Perm = perm, Mode = mode, Extension = extension }, ct).ConfigureAwait(false)).Qid;

    public async Task<byte[]> ReadAsync(uint fid, ulong offset, int count, CancellationToken ct = default)
    {
        Fcall r = await RpcAsync(new Fcall { Type = MessageType.Tread, Fid = fid, Offset = offset, Count = (uint)Math.Min(count, MaxPayload) }, ct).ConfigureAwait(false);
        return r.Data.ToArray();
    }

    public async Task<int> WriteAsync(uint fid, ulong offset, ReadOnlyMemory<byte> data, CancellationToken ct = default)
    {
        int total = 0;
        while (total < data.Length || data.Length == 0)
        {
            ReadOnlyMemory<byte> chunk = data.Slice(total, Math.Min(MaxPayload, data.Length - total));
            Fcall r = await RpcAsync(new Fcall { Type = MessageType.Twrite, Fid = fid, Offset = offset + (ulong)total, Data = chunk }, ct).ConfigureAwait(false);
            if (r.Count == 0 && chunk.Length > 0)
            {
                throw new IOException("short write");
            }
            total += (int)r.Count;
            if (data.Length == 0)
            {
                break;
            }
        }
        return total;
    }

    public async Task RemoveAsync(uint fid)
    {
        try
        {
            await RpcAsync(new Fcall { Type = MessageType.Tremove, Fid = fid }).ConfigureAwait(false);
        }
        finally
        {
            ReleaseFid(fid);
        }
    }

    public async Task<Stat> StatAsync(uint fid, CancellationToken ct = default) =>
        (await RpcAsync(new Fcall { Type = MessageType.Tstat, Fid = fid }, ct).ConfigureAwait(false)).Stat!;

    public Task WstatAsync(uint fid, Stat stat, CancellationToken ct = default) =>
        RpcAsync(new Fcall { Type = MessageType.Twstat, Fid = fid, Stat = stat }, ct);

    // ---- path-based helpers ----

    /// <summary>Reads a whole file: Twalk, Topen, Tread until an empty read, Tclunk.</summary>
    public async Task<byte[]> ReadAllAsync(string path, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(path, ct).ConfigureAwait(false);
        try
        {
            await OpenAsync(fid, P9.OREAD, ct).ConfigureAwait(false);
            using var buffer = new MemoryStream();
            while (true)
            {
                byte[] chunk = await ReadAsync(fid, (ulong)buffer.Length, MaxPayload, ct).ConfigureAwait(false);
                if (chunk.Length == 0)
                {
                    break;
                }
                buffer.Write(chunk);
            }
            return buffer.ToArray();
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    public async Task<string> ReadTextAsync(string path, CancellationToken ct = default) =>
        System.Text.Encoding.UTF8.GetString(await ReadAllAsync(path, ct).ConfigureAwait(false));

    /// <summary>Opens an existing file for writing and writes <paramref name="data"/> at offset 0 (optionally truncating first).</summary>
    public async Task WriteFileAsync(string path, ReadOnlyMemory<byte> data, bool truncate = true, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(path, ct).ConfigureAwait(false);
        try
        {
            if (truncate)
            {
                // As `echo x > f` does over .u: wstat length 0, then write.
                await WstatAsync(fid, Stat.DontTouch with { Length = 0 }, ct).ConfigureAwait(false);
            }
            await OpenAsync(fid, P9.OWRITE, ct).ConfigureAwait(false);
            await WriteAsync(fid, 0, data, ct).ConfigureAwait(false);
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    public Task WriteTextAsync(string path, string text, CancellationToken ct = default) =>
        WriteFileAsync(path, System.Text.Encoding.UTF8.GetBytes(text), true, ct);

    /// <summary>Creates (or, on servers that allow it, replaces) a file in <paramref name="dirPath"/> and writes it.</summary>
    public async Task CreateFileAsync(string dirPath, string name, ReadOnlyMemory<byte> data, uint perm = 0x1A4, string extension = "", CancellationToken ct = default)
    {
        uint fid = await WalkAsync(dirPath, ct).ConfigureAwait(false);
        try
        {
            await CreateAsync(fid, name, perm, P9.ORDWR, extension, ct).ConfigureAwait(false);
            if (data.Length > 0)
            {
                await WriteAsync(fid, 0, data, ct).ConfigureAwait(false);
            }
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    public async Task MkdirAsync(string dirPath, string name, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(dirPath, ct).ConfigureAwait(false);
        try
        {
            await CreateAsync(fid, name, P9.DmDir | 0x1ED, P9.OREAD, "", ct).ConfigureAwait(false);
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    public async Task RemovePathAsync(string path, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(path, ct).ConfigureAwait(false);
        await RemoveAsync(fid).ConfigureAwait(false);
    }

    public async Task<Stat> StatPathAsync(string path, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(path, ct).ConfigureAwait(false);
        try
        {
            return await StatAsync(fid, ct).ConfigureAwait(false);
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    public async Task WstatPathAsync(string path, Stat stat, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(path, ct).ConfigureAwait(false);
        try
        {
            await WstatAsync(fid, stat, ct).ConfigureAwait(false);
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
    }

    /// <summary>Lists a directory (stat records on 9P2000/.u, Treaddir on .L), reading until the end.</summary>
    public async Task<IReadOnlyList<string>> ListAsync(string path, CancellationToken ct = default)
    {
        uint fid = await WalkAsync(path, ct).ConfigureAwait(false);
        var names = new List<string>();
        try
        {
            await OpenAsync(fid, P9.OREAD, ct).ConfigureAwait(false);
            ulong offset = 0;
            while (true)
            {
                if (Dialect == Dialect.Linux)
                {
                    Fcall r = await RpcAsync(new Fcall { Type = MessageType.Treaddir, Fid = fid, Offset = offset, Count = (uint)MaxPayload }, ct).ConfigureAwait(false);
                    var entries = new List<DirEntry>();
                    if (!DirEntryCodec.TryParse(r.Data.Span, entries))
                    {
                        throw new IOException("malformed Rreaddir");
                    }
                    if (entries.Count == 0)
                    {
                        break;
                    }
                    foreach (DirEntry e in entries)
                    {
                        names.Add(e.Name);
                        offset = e.Offset;
                    }
                }
                else
                {
                    byte[] data = await ReadAsync(fid, offset, MaxPayload, ct).ConfigureAwait(false);
                    if (data.Length == 0)
                    {
                        break;
                    }
                    var stats = new List<Stat>();
                    if (!DirEntryCodec.TryParseStats(data, Dialect, stats))
                    {
                        throw new IOException("malformed directory read");
                    }
                    foreach (Stat s in stats)
                    {
                        names.Add(s.Name);
                    }
                    offset += (ulong)data.Length;
                }
            }
        }
        finally
        {
            await ClunkAsync(fid).ConfigureAwait(false);
        }
        return names;
    }

    public async ValueTask DisposeAsync()
    {
        _closed.Cancel();
        try
        {
            _stream.Dispose();
        }
        catch (IOException)
        {
        }
        try
        {
            await _reader.ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
        }
    }
}
