using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Kit.Agent;

/// <summary>
/// An AF_VSOCK address for .NET sockets, which have no built-in one: struct sockaddr_vm (linux/vm_sockets.h) is
/// { sa_family_t svm_family; unsigned short svm_reserved1; unsigned int svm_port; unsigned int svm_cid;
///   unsigned char svm_flags; unsigned char svm_zero[3]; } = 16 bytes.
/// </summary>
internal sealed class VsockEndPoint(uint cid, uint port) : EndPoint
{
    public const AddressFamily Vsock = (AddressFamily)40;

    /// <summary>VMADDR_CID_ANY: accept on whatever CID the guest has.</summary>
    public const uint AnyCid = 0xFFFFFFFF;

    private const int Size = 16;

    public uint Cid { get; } = cid;

    public uint Port { get; } = port;

    public override AddressFamily AddressFamily => Vsock;

    public override SocketAddress Serialize()
    {
        // SocketAddress refuses families .NET does not know on Linux (PlatformNotSupportedException), so the buffer is
        // made for AF_UNSPEC and the family written over it; bind, connect and accept pass the bytes through as they are.
        var address = new SocketAddress(AddressFamily.Unspecified, Size);
        Span<byte> bytes = address.Buffer.Span;
        BinaryPrimitives.WriteUInt16LittleEndian(bytes, (ushort)Vsock);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[4..], Port);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes[8..], Cid);
        return address;
    }

    /// <summary>The peer of an accepted connection (its Family property is unusable for AF_VSOCK, so only bytes are read).</summary>
    public override EndPoint Create(SocketAddress socketAddress)
    {
        ReadOnlySpan<byte> bytes = socketAddress.Buffer.Span;
        return bytes.Length < 12
            ? new VsockEndPoint(AnyCid, 0)
            : new VsockEndPoint(BinaryPrimitives.ReadUInt32LittleEndian(bytes[8..]), BinaryPrimitives.ReadUInt32LittleEndian(bytes[4..]));
    }

    public override string ToString() => $"vsock:{Cid}:{Port}";
}
