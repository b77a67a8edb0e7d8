using Kit.HyperKit.HostFs;

namespace Kit.HyperKit.Devices.Virtio.NineP;

/// <summary>Builds a virtio-9p device for a share: a host directory (built-in server) or a 9P server address.</summary>
public static class NinePShares
{
    /// <summary>
    /// <paramref name="target"/>: tcp://HOST:PORT or unix:PATH relays to that server (connected when the guest mounts);
    /// anything else is a host directory, which must exist. <paramref name="trusted"/>: the guest's chown and set-id
    /// bits are applied to the directory (docs/security.md). Throws ArgumentException with a user-facing message.
    /// </summary>
    public static VirtioNineP Create(string tag, string target, bool readOnly, bool trusted = false)
    {
        if (target.StartsWith("tcp://", StringComparison.Ordinal) || target.StartsWith("unix:", StringComparison.Ordinal))
        {
            if (readOnly || trusted)
            {
                string option = readOnly ? ",ro" : ",trusted";
                throw new ArgumentException($"share {tag}: \"{option}\" applies to directories; a 9P server decides itself what is writable and who owns what");
            }
            // Parsed now, once, so a typo fails at start, not at mount time.
            Func<System.Net.Sockets.Socket> connect;
            try
            {
                connect = StreamNinePChannel.Connector(target);
            }
            catch (ArgumentException e)
            {
                throw new ArgumentException($"share {tag}: {e.Message}");
            }
            return new VirtioNineP(tag, () => new StreamNinePChannel(connect, VirtioNineP.MaxMessage + 4096));
        }
        string root = Path.GetFullPath(target);
        if (!Directory.Exists(root))
        {
            throw new ArgumentException($"share {tag}: {root} is not a directory");
        }
        var options = new HostFsOptions(root, readOnly) { Trusted = trusted };
        return new VirtioNineP(tag, () => new HostFsNinePChannel(options));
    }
}
