using System.Buffers.Binary;
using Kit.NineP.Server;

namespace Kit.NineP.Tests;

/// <summary>The 9P framing on its own: size[4] type[1] tag[2] body, bounded by a limit (intro(5)).</summary>
public sealed class FrameReaderTests
{
    private static byte[] Frame(int size, byte type = 100, ushort tag = 1)
    {
        byte[] f = new byte[size];
        BinaryPrimitives.WriteUInt32LittleEndian(f, (uint)size);
        f[4] = type;
        BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(5), tag);
        for (int i = 7; i < size; i++)
        {
            f[i] = (byte)i;
        }
        return f;
    }

    private static async Task<(FrameStatus Status, byte[] Frame, string Reason)> ReadOne(NinePFrameReader reader, uint limit)
    {
        FrameStatus status = await reader.ReadAsync(limit, TestContext.Current.CancellationToken);
        return (status, reader.Frame.ToArray(), reader.Reason);
    }

    [Fact]
    public async Task Frames_are_cut_at_their_size_fields_and_the_buffer_grows_as_needed()
    {
        byte[] small = Frame(7), large = Frame(70_000, tag: 2);
        using var reader = new NinePFrameReader(new MemoryStream([.. small, .. large]));
        (FrameStatus s1, byte[] f1, _) = await ReadOne(reader, 100_000);
        Assert.Equal(FrameStatus.Frame, s1);
        Assert.Equal(small, f1);
        (FrameStatus s2, byte[] f2, _) = await ReadOne(reader, 100_000);
        Assert.Equal(FrameStatus.Frame, s2);
        Assert.Equal(large, f2);
        Assert.Equal(FrameStatus.EndOfStream, (await ReadOne(reader, 100_000)).Status);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(6)]
    [InlineData(8193)]
    [InlineData(uint.MaxValue)]
    public async Task A_size_below_the_header_or_above_the_limit_is_refused_before_the_body_is_read(uint size)
    {
        byte[] bytes = new byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, size);
        var stream = new MemoryStream(bytes);
        using var reader = new NinePFrameReader(stream);
        (FrameStatus status, byte[] frame, string reason) = await ReadOne(reader, 8192);
        Assert.Equal(FrameStatus.BadSize, status);
        Assert.Empty(frame);
        Assert.Contains(size.ToString(System.Globalization.CultureInfo.InvariantCulture), reason, StringComparison.Ordinal);
        Assert.Equal(4, stream.Position);
    }

    [Fact]
    public async Task A_stream_that_ends_inside_a_frame_is_truncated()
    {
        byte[] f = Frame(64);
        using var reader = new NinePFrameReader(new MemoryStream(f[..40]));
        Assert.Equal(FrameStatus.Truncated, (await ReadOne(reader, 8192)).Status);
    }

    [Fact]
    public void The_same_size_check_serves_transports_that_frame_for_themselves()
    {
        Assert.True(NinePFrameReader.CheckSize(7, 8192, out _));
        Assert.True(NinePFrameReader.CheckSize(8192, 8192, out _));
        Assert.False(NinePFrameReader.CheckSize(6, 8192, out _));
        Assert.False(NinePFrameReader.CheckSize(8193, 8192, out string reason));
        Assert.Contains("8193", reason, StringComparison.Ordinal);
    }
}
