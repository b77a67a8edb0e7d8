using Microsoft.Win32.SafeHandles;

namespace Kit.HyperKit.Kvm;

/// <summary>fallocate(2) hole punching for virtio-blk discard (libc interop lives in this folder).</summary>
internal static class FileSpace
{
    /// <summary>Deallocates [offset, offset+length) keeping the file size; the range then reads as zeros.</summary>
    public static bool PunchHole(SafeFileHandle handle, long offset, long length)
    {
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            return LibC.Fallocate(handle.DangerousGetHandle(), LibC.FALLOC_FL_PUNCH_HOLE | LibC.FALLOC_FL_KEEP_SIZE, offset, length) == 0;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }
}
