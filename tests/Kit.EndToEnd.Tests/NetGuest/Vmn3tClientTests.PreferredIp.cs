using System.Net;
using System.Net.Sockets;

namespace Kit.EndToEnd.Tests.NetGuest;

/// <summary>
/// VMN3T command 8 (Preferred_ipv4, reference/vpnkit.md §2.2.1): hyperkit's <c>preferred_ipv4=</c> asks vpnkit for
/// a specific address, and vpnkit's DHCP server then hands exactly that address to the VM (or answers Disconnect
/// "Preferred IP address out of range." / "... already used."). Worked example in the reference: preferred
/// 192.168.65.3 is sent as 03 41 A8 C0.
/// </summary>
public sealed partial class Vmn3tClientTests
{
    [Fact]
    public async Task Preferred_ipv4_command_gets_that_address_in_the_dhcp_offer()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);
        IPAddress preferred = IPAddress.Parse("192.168.65.10");
        (_, byte[] vif, Socket s) = await HandshakeAsync(Uuid, cancel, preferred);
        using (s)
        {
            Assert.Equal(1, vif[0]); // VIF, not Disconnect
            (byte[] bootp, _) = await DiscoverAsync(s, vif[5..11], 0x0a0a0a0a, cancel);
            IPAddress offered = new(bootp[16..20]);
            output.WriteLine($"preferred {preferred}, offered {offered}");
            Assert.True(preferred.Equals(offered),
                $"VMN3T command 8 asked for {preferred} (wire bytes 0A 41 A8 C0) but the DHCP offer gave {offered}: the preferred address is ignored");
        }
    }

    [Fact]
    public async Task Preferred_ipv4_out_of_range_gets_a_disconnect()
    {
        CancellationToken cancel = TestContext.Current.CancellationToken;
        using KitNetServe kit = await KitNetServe.StartAsync(["--vmnet", "unix:" + SocketPath], _dns, pcap: null, cancel);
        (_, byte[] response, Socket s) = await HandshakeAsync(Uuid, cancel, IPAddress.Parse("10.99.0.5"));
        s.Dispose();
        output.WriteLine($"response: {Convert.ToHexString(response, 0, 16)}");
        Assert.True(response[0] == 2, $"preferred 10.99.0.5 is outside 192.168.65.0/24, yet the response type is {response[0]} (1 = VIF), not 2 (Disconnect)");
    }
}
