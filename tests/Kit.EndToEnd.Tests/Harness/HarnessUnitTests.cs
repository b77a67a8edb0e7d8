using System.Text;
using Kit.Linux;
using Kit.Testing;

namespace Kit.EndToEnd.Tests.Harness;

/// <summary>The harness's own parsing and packing, without booting anything.</summary>
public sealed class HarnessUnitTests
{
    [Fact]
    public void Markers_give_output_and_exit_code()
    {
        const string serial = "SeaBIOS\n\u001bc\u001b[2JKIT-GUEST-START\nline one\nline two\nKIT-GUEST-EXIT 17\n[ 2.6] reboot: Power down\n";
        Assert.True(QemuGuest.TryParseMarkers(serial, out int code, out string text));
        Assert.Equal(17, code);
        Assert.Equal("line one\nline two\n", text);
    }

    [Fact]
    public void Output_without_a_trailing_newline_still_parses()
    {
        Assert.True(QemuGuest.TryParseMarkers("KIT-GUEST-START\nno newlineKIT-GUEST-EXIT 0\n", out int code, out string text));
        Assert.Equal(0, code);
        Assert.Equal("no newline", text);
    }

    [Theory]
    [InlineData("")]
    [InlineData("KIT-GUEST-START\nkernel panic\n")]
    [InlineData("KIT-GUEST-EXIT \n")]
    [InlineData("KIT-GUEST-EXIT 99999999999\n")]
    public void Missing_or_broken_exit_marker_is_reported(string serial) =>
        Assert.False(QemuGuest.TryParseMarkers(serial, out _, out _));

    [Theory]
    [InlineData("\u001bc\u001b[?7l\u001b[2JKIT-GUEST-START", "KIT-GUEST-START")]
    [InlineData("line\r", "line")]
    [InlineData("bell\u0007 tab\there", "bell? tab\there")]
    [InlineData("cut \u001b[", "cut ")]
    [InlineData("plain", "plain")]
    public void Console_lines_are_made_printable(string raw, string expected) =>
        Assert.Equal(expected, Text.Printable(raw));

    [Fact]
    public void Shell_quoting_survives_sh()
    {
        Assert.Equal("plain/path.dll", Text.ShellQuote("plain/path.dll"));
        Assert.Equal("'it'\\''s here'", Text.ShellQuote("it's here"));
        Assert.Equal("''", Text.ShellQuote(""));
    }

    [Fact]
    public void Build_output_names_kernel_and_initrd()
    {
        string kernel = Path.GetTempFileName();
        string initrd = Path.GetTempFileName();
        try
        {
            GuestImage image = GuestImage.Parse($"noise\nkernel={kernel}\ninitrd={initrd}\n");
            Assert.Equal(kernel, image.Kernel);
            Assert.Equal(initrd, image.Initrd);
            Assert.Throws<InvalidOperationException>(() => GuestImage.Parse("kernel=/nonexistent\ninitrd=/nonexistent\n"));
        }
        finally
        {
            File.Delete(kernel);
            File.Delete(initrd);
        }
    }

    [Fact]
    [Trait("Tier", "Real")]
    public async Task Cpio_archive_is_read_by_gnu_cpio()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        byte[] archive = CpioArchive.BuildGzip(
        [
            new("kit/run", Encoding.UTF8.GetBytes("echo hi\n")),
            new("kit/data/blob.bin", new byte[] { 1, 2, 3 }, 0x1A4),
        ]);
        DirectoryInfo dir = Directory.CreateTempSubdirectory("kit-cpio-");
        try
        {
            string file = Path.Combine(dir.FullName, "extra.cpio.gz");
            await File.WriteAllBytesAsync(file, archive, cancel);
            ProcessResult list = (await ProcessRunner.ShellAsync($"zcat {Text.ShellQuote(file)} | cpio -itv --quiet", cancellationToken: cancel)).EnsureSuccess();
            string[] lines = list.StandardOutput.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal(4, lines.Length);
            Assert.StartsWith("drwxr-xr-x", lines[0], StringComparison.Ordinal);
            Assert.EndsWith(" kit", lines[0], StringComparison.Ordinal);
            Assert.StartsWith("-rwxr-xr-x", lines[1], StringComparison.Ordinal);
            Assert.EndsWith(" kit/run", lines[1], StringComparison.Ordinal);
            Assert.EndsWith(" kit/data", lines[2], StringComparison.Ordinal);
            Assert.StartsWith("-rw-r--r--", lines[3], StringComparison.Ordinal);
            ProcessResult run = (await ProcessRunner.ShellAsync($"zcat {Text.ShellQuote(file)} | cpio -i --quiet --to-stdout kit/run", cancellationToken: cancel)).EnsureSuccess();
            Assert.Equal("echo hi\n", run.StandardOutput);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
