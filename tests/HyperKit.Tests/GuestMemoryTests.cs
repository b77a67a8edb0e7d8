using Kit.HyperKit.Memory;

namespace Kit.HyperKit.Tests;

public sealed class GuestMemoryTests
{
    [Fact]
    public void ReadsAndWritesInsideRam()
    {
        using var memory = new GuestMemory(0x10000);
        Assert.True(memory.TryWriteU32(0xFFFC, 0xDEADBEEF));
        Assert.True(memory.TryReadU32(0xFFFC, out uint value));
        Assert.Equal(0xDEADBEEFu, value);
        Assert.True(memory.TryGetSpan(0x10000, 0, out _));
    }

    [Theory]
    [InlineData(0xFFFDUL, 4)]
    [InlineData(0x10000UL, 1)]
    [InlineData(ulong.MaxValue, 1)]
    [InlineData(ulong.MaxValue - 2, 4)]
    [InlineData(0xFFFFUL, 1000)]
    public void RefusesRangesThatLeaveRam(ulong gpa, int length)
    {
        using var memory = new GuestMemory(0x10000);
        Assert.False(memory.TryGetSpan(gpa, length, out _));
        Assert.False(memory.Contains(gpa, (ulong)length));
        Assert.False(memory.TryWriteU32(gpa, 1));
        Assert.False(memory.TryReadU64(gpa, out ulong v));
        Assert.Equal(0UL, v);
    }

    [Fact]
    public void NegativeLengthIsRefused()
    {
        using var memory = new GuestMemory(0x1000);
        Assert.False(memory.TryGetSpan(0, -1, out _));
    }

    [Fact]
    public void SizeMustBePageMultiple() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new GuestMemory(1000));
}
