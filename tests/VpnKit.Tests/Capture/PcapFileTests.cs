using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit;

namespace Kit.VpnKit.Tests.Capture;

/// <summary>
/// Security review finding 9: the capture holds all of the guest's traffic, so <c>--pcap FILE</c> is created 0600 and a
/// symlink at FILE is refused (a planted link must not make kit truncate the file it points at).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class PcapFileTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("kit-pcap-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static VpnKitServer Server(string pcap) =>
        new(new VpnKitServerOptions { DnsUpstreams = [new IPEndPoint(IPAddress.Loopback, 9)], PcapPath = pcap }, NullLoggerFactory.Instance);

    [Fact]
    public void CaptureIsCreatedOwnerOnly()
    {
        string path = Path.Combine(_dir, "new.pcap");
        using (Server(path))
        {
        }
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        Assert.Equal(24, new FileInfo(path).Length); // the libpcap header was written
    }

    [Fact]
    public void ExistingWorldReadableCaptureIsTruncatedAndMadeOwnerOnly()
    {
        string path = Path.Combine(_dir, "old.pcap");
        File.WriteAllBytes(path, new byte[1000]);
        File.SetUnixFileMode(path, (UnixFileMode)0x1A4); // 0644
        using (Server(path))
        {
        }
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
        Assert.Equal(24, new FileInfo(path).Length);
    }

    [Fact]
    public void SymlinkAtThePathIsRefusedAndItsTargetUntouched()
    {
        string target = Path.Combine(_dir, "victim");
        File.WriteAllText(target, "precious");
        File.SetUnixFileMode(target, (UnixFileMode)0x1A4);
        string path = Path.Combine(_dir, "capture.pcap");
        File.CreateSymbolicLink(path, target);
        IOException e = Assert.Throws<IOException>(() => Server(path).Dispose());
        Assert.Contains("symbolic link", e.Message, StringComparison.Ordinal);
        Assert.Equal("precious", File.ReadAllText(target));
        Assert.Equal((UnixFileMode)0x1A4, File.GetUnixFileMode(target));
    }
}
