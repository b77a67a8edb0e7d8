using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Devices.Virtio.Block;

/// <summary>Storage behind a virtio-blk device.</summary>
public interface IBlockBackend : IDisposable
{
    long Length { get; }

    bool ReadOnly { get; }

    /// <summary>Reads exactly destination.Length bytes at offset (zeros past the end); false on I/O error.</summary>
    bool Read(long offset, Span<byte> destination);

    bool Write(long offset, ReadOnlySpan<byte> source);

    bool Flush();

    /// <summary>Deallocates a range (the bytes then read as zeros); false when unsupported or failed.</summary>
    bool Discard(long offset, long length);
}

/// <summary>A raw image file: reads and writes at byte offsets, fsync for flush, hole punching for discard.</summary>
public sealed class RawFileBackend : IBlockBackend
{
    private readonly SafeFileHandle _handle;
    private readonly FileStream _stream;

    public RawFileBackend(string path, bool readOnly)
    {
        ReadOnly = readOnly;
        _stream = new FileStream(path, FileMode.Open, readOnly ? FileAccess.Read : FileAccess.ReadWrite,
            FileShare.Read, 1, FileOptions.None);
        _handle = _stream.SafeFileHandle;
        Length = RandomAccess.GetLength(_handle);
    }

    public long Length { get; }

    public bool ReadOnly { get; }

    public bool Read(long offset, Span<byte> destination)
    {
        try
        {
            int done = 0;
            while (done < destination.Length)
            {
                int n = RandomAccess.Read(_handle, destination[done..], offset + done);
                if (n == 0)
                {
                    destination[done..].Clear();
                    break;
                }
                done += n;
            }
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    public bool Write(long offset, ReadOnlySpan<byte> source)
    {
        if (ReadOnly)
        {
            return false;
        }
        try
        {
            RandomAccess.Write(_handle, source, offset);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    public bool Flush()
    {
        try
        {
            _stream.Flush(flushToDisk: true);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    public bool Discard(long offset, long length) =>
        !ReadOnly && Kvm.FileSpace.PunchHole(_handle, offset, length);

    public void Dispose() => _stream.Dispose();
}
