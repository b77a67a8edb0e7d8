using System.Security.Cryptography;
using Kit.Linux;

namespace Kit.HyperKit.Kvm;

/// <summary>
/// Random bytes from the host kernel's CSPRNG through getrandom(2), for devices that hand entropy to the guest.
/// </summary>
/// <remarks>
/// .NET's <see cref="RandomNumberGenerator"/> on Linux goes through OpenSSL, and its first use loads and initializes
/// libssl and libcrypto. The guest's virtio-rng probe was that first use, so the guest waited for it: probing the
/// device took 200-780 ms under kit against 50-70 ms under QEMU in the nested L1 (docs/hyperkit-boot.md). getrandom
/// draws from the same kernel pool OpenSSL seeds itself from, without loading anything.
/// </remarks>
public static unsafe class HostRandom
{
    private const int ENOSYS = 38;

    public static void Fill(Span<byte> buffer)
    {
        fixed (byte* start = buffer)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                // SAFETY: the kernel writes at most buffer.Length - done bytes at start + done, inside the pinned span.
                nint n = LibC.GetRandom(start + done, (nuint)(buffer.Length - done), 0);
                if (n > 0)
                {
                    done += (int)n;
                    continue;
                }
                int errno = Sys.LastErrno;
                if (n < 0 && errno == Sys.EINTR)
                {
                    continue;
                }
                if (n < 0 && errno == ENOSYS)
                {
                    RandomNumberGenerator.Fill(buffer[done..]);   // kernels before 3.17
                    return;
                }
                throw new IOException($"getrandom: {Sys.ErrnoText(errno)}");
            }
        }
    }
}
