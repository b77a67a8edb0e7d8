namespace Kit.Testing;

/// <summary>
/// Bounds how many QEMU guests run at once on this machine (2 cores), across threads and across test processes:
/// a slot is an exclusively opened lock file (.NET takes an advisory flock for FileShare.None on Unix), so a
/// crashed process frees its slot with its file descriptors.
/// </summary>
internal static class QemuSlots
{
    private static readonly SemaphoreSlim s_local = new(QemuGuest.MaxConcurrentGuests, QemuGuest.MaxConcurrentGuests);
    private static readonly string s_dir = Path.Combine(Path.GetTempPath(), "kit-qemu-slots");

    /// <summary>Waits for a free slot; dispose the result to free it.</summary>
    public static async Task<IDisposable> AcquireAsync(CancellationToken cancellationToken)
    {
        await s_local.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            Directory.CreateDirectory(s_dir);
            while (true)
            {
                for (int i = 0; i < QemuGuest.MaxConcurrentGuests; i++)
                {
                    try
                    {
                        var file = new FileStream(Path.Combine(s_dir, $"slot{i}"), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                        return new Slot(file);
                    }
                    catch (IOException)
                    {
                        // Held by another process.
                    }
                }
                await Task.Delay(250, cancellationToken).ConfigureAwait(false);
            }
        }
        catch
        {
            s_local.Release();
            throw;
        }
    }

    private sealed class Slot(FileStream file) : IDisposable
    {
        private int _disposed;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0)
            {
                file.Dispose();
                s_local.Release();
            }
        }
    }
}
