using System.Buffers.Binary;

namespace Kit.Fuzz;

/// <summary>
/// Every fuzz target by name. A target takes one input, runs it to the end and returns; rejecting the input (a false
/// return, an error reply, a dropped connection) is success. Only an exception escaping the target is a finding, and
/// so is a hang (afl-fuzz's -t). Targets are deterministic: no clock (fake time from the input), fresh state per input.
/// </summary>
public static class FuzzTargets
{
    private static readonly Dictionary<string, Action<byte[]>> All = new(StringComparer.Ordinal)
    {
        ["ninep-codec"] = NinePTargets.Codec,
        ["ninep-datakit"] = NinePTargets.DataKitSession,
        ["ninep-hostfs"] = NinePTargets.HostFsSession,
        ["vpnkit-gateway"] = VpnKitTargets.Gateway,
        ["vpnkit-wire"] = VpnKitTargets.Wire,
        ["vmn3t"] = VpnKitTargets.Vmn3tHandshake,
        ["qemu-stream"] = VpnKitTargets.QemuStream,
        ["virtio-splitqueue"] = HyperKitTargets.SplitQueueChains,
        ["vhost-user-message"] = HyperKitTargets.VhostUserMessages,
        ["vhost-user-session"] = HyperKitTargets.VhostUserSession,
    };

    /// <summary>Inputs longer than this are cut (keeps socket-fed targets within one socket buffer).</summary>
    public const int MaxInput = 60_000;

    public static IReadOnlyCollection<string> Names => All.Keys;

    public static bool Exists(string name) => All.ContainsKey(name);

    public static void Run(string name, byte[] input)
    {
        if (!All.TryGetValue(name, out Action<byte[]>? target))
        {
            throw new ArgumentException($"unknown fuzz target '{name}' (known: {string.Join(", ", All.Keys)})", nameof(name));
        }
        target(input.Length > MaxInput ? input.AsSpan(0, MaxInput).ToArray() : input);
    }

    /// <summary>
    /// Splits a session input into records [u16 LE length][length bytes]; a short tail is ignored. Session targets use
    /// this so the fuzzer never has to get a 9P or vhost-user size field right to reach the handlers.
    /// </summary>
    internal static IEnumerable<ReadOnlyMemory<byte>> Records(byte[] input)
    {
        int at = 0;
        while (at + 2 <= input.Length)
        {
            int len = BinaryPrimitives.ReadUInt16LittleEndian(input.AsSpan(at));
            at += 2;
            len = Math.Min(len, input.Length - at);
            yield return input.AsMemory(at, len);
            at += len;
        }
    }

    /// <summary>Writes records in the form <see cref="Records"/> reads (seed corpora).</summary>
    internal static byte[] Join(IEnumerable<byte[]> records)
    {
        var ms = new MemoryStream();
        Span<byte> len = stackalloc byte[2];
        foreach (byte[] r in records)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(len, checked((ushort)r.Length));
            ms.Write(len);
            ms.Write(r);
        }
        return ms.ToArray();
    }
}

/// <summary>A finding that is not an exception of the code under test escaping (a swallowed handler failure).</summary>
public sealed class FuzzFindingException(string message, Exception? inner = null) : Exception(message, inner);
