using System.Text;

namespace Kit.Agent.Tests;

/// <summary>An output stream that collects what a command printed and lets a test wait for some text to appear.</summary>
internal sealed class Capture : Stream
{
    private readonly MemoryStream _bytes = new();
    private readonly Lock _lock = new();
    private readonly List<(string Text, TaskCompletionSource Seen)> _waiters = [];

    public string Text
    {
        get
        {
            lock (_lock)
            {
                return Encoding.UTF8.GetString(_bytes.GetBuffer(), 0, (int)_bytes.Length);
            }
        }
    }

    public long Count
    {
        get
        {
            lock (_lock)
            {
                return _bytes.Length;
            }
        }
    }

    public byte[] Bytes()
    {
        lock (_lock)
        {
            return _bytes.ToArray();
        }
    }

    /// <summary>Completes once the output contains <paramref name="text"/>; fails after <paramref name="timeout"/>.</summary>
    public async Task WaitForAsync(string text, TimeSpan timeout)
    {
        var seen = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_lock)
        {
            if (Encoding.UTF8.GetString(_bytes.GetBuffer(), 0, (int)_bytes.Length).Contains(text, StringComparison.Ordinal))
            {
                return;
            }
            _waiters.Add((text, seen));
        }
        if (await Task.WhenAny(seen.Task, Task.Delay(timeout)) != seen.Task)
        {
            throw new TimeoutException($"output never contained \"{text}\"; it was: \"{Text}\"");
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        lock (_lock)
        {
            _bytes.Write(buffer);
            string now = Encoding.UTF8.GetString(_bytes.GetBuffer(), 0, (int)_bytes.Length);
            for (int i = _waiters.Count - 1; i >= 0; i--)
            {
                if (now.Contains(_waiters[i].Text, StringComparison.Ordinal))
                {
                    _waiters[i].Seen.TrySetResult();
                    _waiters.RemoveAt(i);
                }
            }
        }
    }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        Write(buffer.Span);
        return ValueTask.CompletedTask;
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
    {
        Write(buffer.AsSpan(offset, count));
        return Task.CompletedTask;
    }

    public override void Flush()
    {
    }

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
