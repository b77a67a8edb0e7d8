using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using Kit.Agent.Protocol;

namespace Kit.Agent;

/// <summary>
/// Reads the kernel's socket tables (/proc/net/tcp, tcp6, udp, udp6; proc_net_tcp.txt in the kernel docs) for the
/// sockets a host could forward to: TCP in LISTEN, UDP bound but unconnected, on a wildcard or non-loopback address.
/// </summary>
internal static class ProcNet
{
    private const string TcpListen = "0A", UdpUnconnected = "07";

    /// <summary>The listening set under <paramref name="procNet"/> (normally /proc/net), sorted and without duplicates.</summary>
    public static List<ListeningPort> Read(string procNet)
    {
        var ports = new List<ListeningPort>();
        Parse(TryRead(Path.Combine(procNet, "tcp")), "tcp", ports);
        Parse(TryRead(Path.Combine(procNet, "tcp6")), "tcp", ports);
        Parse(TryRead(Path.Combine(procNet, "udp")), "udp", ports);
        Parse(TryRead(Path.Combine(procNet, "udp6")), "udp", ports);
        return Normalize(ports);
    }

    public static List<ListeningPort> Normalize(List<ListeningPort> ports)
    {
        var unique = new HashSet<ListeningPort>(ports);
        var sorted = new List<ListeningPort>(unique);
        sorted.Sort(static (a, b) =>
        {
            int c = string.CompareOrdinal(a.Protocol, b.Protocol);
            if (c == 0)
            {
                c = a.Port.CompareTo(b.Port);
            }
            return c != 0 ? c : string.CompareOrdinal(a.Address, b.Address);
        });
        return sorted;
    }

    /// <summary>Adds the forwardable sockets of one table's text; lines that do not parse are skipped.</summary>
    public static void Parse(string? table, string protocol, List<ListeningPort> into)
    {
        if (table is null)
        {
            return;
        }
        string wanted = protocol == "tcp" ? TcpListen : UdpUnconnected;
        foreach (string line in table.Split('\n'))
        {
            // "  sl  local_address rem_address   st ..." then "   0: 0100007F:0277 00000000:0000 0A ..."
            string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (fields.Length < 4 || !fields[0].EndsWith(':') || fields[3] != wanted)
            {
                continue;
            }
            if (!TryEndpoint(fields[1], out IPAddress? address, out int port) || port == 0)
            {
                continue;
            }
            // A connected UDP socket has a remote port; only unconnected ones receive from anyone.
            if (protocol == "udp" && (!TryEndpoint(fields[2], out _, out int remotePort) || remotePort != 0))
            {
                continue;
            }
            IPAddress plain = address!.IsIPv4MappedToIPv6 ? address.MapToIPv4() : address;
            if (IPAddress.IsLoopback(plain))
            {
                continue;
            }
            into.Add(new ListeningPort(protocol, address.ToString(), port));
        }
    }

    /// <summary>"0100007F:1F90": the address as the kernel prints it (32-bit words in host order) and the port.</summary>
    private static bool TryEndpoint(string text, out IPAddress? address, out int port)
    {
        address = null;
        port = 0;
        int colon = text.IndexOf(':', StringComparison.Ordinal);
        if (colon is not (8 or 32) || text.Length != colon + 5
            || !int.TryParse(text.AsSpan(colon + 1), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out port))
        {
            return false;
        }
        Span<byte> bytes = stackalloc byte[colon / 2];
        for (int word = 0; word < colon / 8; word++)
        {
            if (!uint.TryParse(text.AsSpan(word * 8, 8), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out uint value))
            {
                return false;
            }
            // The kernel printed each word with %08X of a native-order load of network-order bytes.
            if (BitConverter.IsLittleEndian)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(bytes[(word * 4)..], value);
            }
            else
            {
                BinaryPrimitives.WriteUInt32BigEndian(bytes[(word * 4)..], value);
            }
        }
        address = new IPAddress(bytes);
        return true;
    }

    private static string? TryRead(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // no IPv6 in this kernel, or no /proc
        }
    }
}
