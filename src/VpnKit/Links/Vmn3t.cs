using System.Buffers.Binary;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Kit.VpnKit.Stack;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Links;

/// <summary>
/// Claims <paramref name="address"/> (host order) for the client <paramref name="mac"/>; returns null when granted,
/// else the reason sent to the client in a Disconnect response.
/// </summary>
public delegate string? Vmn3tAddressClaim(ReadOnlySpan<byte> mac, uint address);

/// <summary>
/// The server side of hyperkit's virtio-vpnkit handshake (vpnkit src/hostnet/vmnet.ml; exact bytes in
/// reference/vpnkit.md §2.2.1): 49-byte Init each way, a 41-byte command, a 258-byte VIF response, then frames
/// with a 2-byte little-endian length. The client's UUID picks its MAC, so a reconnecting VM keeps its address.
/// </summary>
public static class Vmn3t
{
    public const int InitLength = 49;
    public const int CommandLength = 41;
    public const int ResponseLength = 258;
    public const uint Version = 22;
    private static readonly byte[] Magic = "VMN3T"u8.ToArray();
    private static readonly byte[] Commit = "0123456789012345678901234567890123456789"u8.ToArray();

    /// <summary>Our Init: magic, version 22 (LE), a 40-byte commit placeholder.</summary>
    public static byte[] ServerInit()
    {
        byte[] b = new byte[InitLength];
        Magic.CopyTo(b, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(5), Version);
        Commit.CopyTo(b, 9);
        return b;
    }

    /// <summary>A VIF response: type 1, MTU, max packet size (MTU + 50, as vpnkit sends), MAC; zero padded.</summary>
    public static byte[] VifResponse(int mtu, ReadOnlySpan<byte> mac)
    {
        byte[] b = new byte[ResponseLength];
        b[0] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(1), (ushort)mtu);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(3), (ushort)(mtu + 50));
        mac.CopyTo(b.AsSpan(5));
        return b;
    }

    /// <summary>A Disconnect response with a reason.</summary>
    public static byte[] Disconnect(string reason)
    {
        byte[] b = new byte[ResponseLength];
        b[0] = 2;
        byte[] r = Encoding.ASCII.GetBytes(reason);
        int n = Math.Min(r.Length, 255);
        b[1] = (byte)n;
        r.AsSpan(0, n).CopyTo(b.AsSpan(2));
        return b;
    }

    /// <summary>A locally administered unicast MAC derived from the UUID (stable across reconnects).</summary>
    public static byte[] MacFor(ReadOnlySpan<byte> uuid)
    {
        byte[] h = SHA256.HashData(uuid);
        byte[] mac = h.AsSpan(0, 6).ToArray();
        mac[0] = (byte)((mac[0] & 0xFE) | 0x02);
        return mac;
    }

    /// <summary>
    /// vpnkit's Disconnect reasons for a refused Preferred_ipv4 (src/hostnet/vmnet.ml via slirp.ml's
    /// connect_client_by_uuid_ip); null when the address was reserved.
    /// </summary>
    internal static string? RefusalReason(LeaseReservation result, uint address) => result switch
    {
        LeaseReservation.Reserved => null,
        LeaseReservation.OutOfRange => "Preferred IP address out of range.",
        LeaseReservation.InUse => $"Preferred IP address {Ip4.Format(address)} already used.",
        _ => "UUID already assigned to a different IP than the IP requested by the client",
    };

    /// <summary>
    /// Runs the handshake on an accepted socket; returns the link, or null (socket closed) on a bad peer or a refused
    /// preferred address. <paramref name="claim"/> is asked for the address of a command 8 (Preferred_ipv4) before
    /// the VIF response goes out, so the guest's first DHCP request already finds its lease.
    /// </summary>
    public static StreamLink? Accept(Socket socket, string name, int mtu, Vmn3tAddressClaim claim)
    {
        try
        {
            byte[] init = new byte[InitLength];
            if (!ReadExactly(socket, init) || !init.AsSpan(0, 5).SequenceEqual(Magic))
            {
                socket.Dispose();
                return null;
            }
            socket.Send(ServerInit());
            uint version = BinaryPrimitives.ReadUInt32LittleEndian(init.AsSpan(5));
            if (version != Version)
            {
                socket.Dispose();
                return null; // vpnkit also answers with its Init first, then drops an unsupported client.
            }
            byte[] cmd = new byte[CommandLength];
            if (!ReadExactly(socket, cmd))
            {
                socket.Dispose();
                return null;
            }
            if (cmd[0] is not (1 or 8))
            {
                socket.Send(Disconnect($"Unsupported command {cmd[0]}"));
                socket.Dispose();
                return null;
            }
            ReadOnlySpan<byte> uuid = cmd.AsSpan(1, 36);
            byte[] mac = uuid.IndexOfAnyExcept((byte)0) < 0 ? MacFor(Guid.NewGuid().ToByteArray()) : MacFor(uuid);
            if (cmd[0] == 8)
            {
                // The address is the uint32 LE of its numeric value: the dotted quad reversed on the wire.
                uint preferred = BinaryPrimitives.ReadUInt32LittleEndian(cmd.AsSpan(37));
                if (claim(mac, preferred) is string reason)
                {
                    socket.Send(Disconnect(reason));
                    socket.Dispose();
                    return null;
                }
            }
            socket.Send(VifResponse(mtu, mac));
            return new StreamLink(socket, $"{name} ({new MacAddress(((ulong)mac[0] << 40) | ((ulong)mac[1] << 32) | ((ulong)mac[2] << 24) | ((ulong)mac[3] << 16) | ((ulong)mac[4] << 8) | mac[5])})", mtu, qemuFraming: false);
        }
        catch (SocketException)
        {
            socket.Dispose();
            return null;
        }
    }

    private static bool ReadExactly(Socket s, Span<byte> b)
    {
        while (b.Length > 0)
        {
            int n = s.Receive(b);
            if (n == 0)
            {
                return false;
            }
            b = b.Slice(n);
        }
        return true;
    }
}
