using Microsoft.Win32.SafeHandles;

namespace Kit.Linux.Tests;

/// <summary>The shared descriptor calls, on eventfds this test makes (no network).</summary>
public sealed class SysTests
{
    [Fact]
    public void Eventfd_signal_wakes_poll_and_read_clears_it()
    {
        int fd = Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK);
        Assert.True(fd >= 0, Sys.ErrnoText(Sys.LastErrno));
        try
        {
            Assert.True(Sys.IsCloseOnExec(fd));
            Assert.Equal(0UL, Sys.ReadEventFd(fd)); // nothing yet: EAGAIN, not a block
            Assert.Equal(Sys.EAGAIN, Sys.LastErrno);
            Span<Sys.PollFd> set = [new Sys.PollFd { Fd = fd, Events = Sys.POLLIN }];
            Assert.Equal(0, Sys.Poll(set, 0));
            Assert.True(Sys.SignalEventFd(fd));
            Assert.True(Sys.SignalEventFd(fd));
            Assert.Equal(1, Sys.Poll(set, 1000));
            Assert.Equal(Sys.POLLIN, set[0].Revents & Sys.POLLIN);
            Assert.Equal(2UL, Sys.ReadEventFd(fd));
            Assert.Equal(0, Sys.Poll(set, 0));
        }
        finally
        {
            Assert.Equal(0, Sys.Close(fd));
        }
    }

    [Fact]
    public void Close_on_exec_and_non_blocking_flags_change()
    {
        int fd = Sys.EventFd(0, Sys.EFD_CLOEXEC);
        try
        {
            Assert.True(Sys.ClearCloseOnExec(fd));
            Assert.False(Sys.IsCloseOnExec(fd));
            // Blocking until O_NONBLOCK: a read of a zero counter would wait, so it is only tried afterwards.
            Assert.True(Sys.SetNonBlocking(fd));
            Assert.Equal(-1, Sys.Read(fd, new byte[8]));
            Assert.Equal(Sys.EAGAIN, Sys.LastErrno);
        }
        finally
        {
            Sys.CloseAll([fd, -1]);
        }
        Assert.Equal(-1, Sys.Close(fd));
        Assert.Equal(Sys.EBADF, Sys.LastErrno);
        Assert.Contains("(errno 9)", Sys.ErrnoText(Sys.EBADF));
    }

    [Fact]
    public void A_closed_handle_throws_instead_of_reaching_another_descriptor()
    {
        var handle = new SafeFileHandle(Sys.EventFd(0, Sys.EFD_CLOEXEC | Sys.EFD_NONBLOCK), ownsHandle: true);
        Assert.True(Sys.SetNonBlocking(handle));
        Assert.True(Sys.SignalEventFd(handle));
        Assert.Equal(8, Sys.Write(handle, BitConverter.GetBytes(4UL)));
        Assert.Equal(5UL, Sys.ReadEventFd(handle));
        handle.Dispose();
        Assert.Throws<ObjectDisposedException>(() => Sys.SignalEventFd(handle));
        Assert.Throws<ObjectDisposedException>(() => Sys.Read(handle, new byte[8]));
    }

    [Fact]
    public void Open_reports_errno()
    {
        Assert.Equal(-1, Sys.Open("/nonexistent/kit-sys-test", Sys.O_RDONLY | Sys.O_CLOEXEC));
        Assert.Equal(2, Sys.LastErrno); // ENOENT
        int fd = Sys.Open("/dev/null", Sys.O_RDWR | Sys.O_CLOEXEC);
        Assert.True(fd >= 0);
        Assert.Equal(3, Sys.Write(fd, "abc"u8));
        Assert.Equal(0, Sys.Read(fd, new byte[4]));
        Assert.Equal(0, Sys.Close(fd));
    }
}
