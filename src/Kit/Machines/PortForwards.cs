using System.Net;
using Kit.Agent.Protocol;
using Kit.VpnKit;

namespace Kit.Cli.Machines;

/// <summary>One forward the daemon holds, or one it could not take and why.</summary>
/// <param name="Source">"auto" (a guest listener the agent reported) or "config" (config/ports in DataKit).</param>
/// <param name="Problem">Null when forwarding; else why not (busy, privileged, ...).</param>
internal sealed record ForwardState(string Protocol, int HostPort, int GuestPort, string Source, string? Problem);

/// <summary>
/// Keeps VPNKit's host-side listeners in step with what listens in the guest (as Lima and Docker Desktop do): each
/// TCP or UDP socket the agent reports on 0.0.0.0, :: or a non-loopback guest address gets the same port on the
/// host's 127.0.0.1, and loses it when the guest closes it. Static forwards from config/ports come first and stay. The
/// guest is not trusted with the host: a port below 1024 is only taken when kit runs as root, a busy host port is
/// reported rather than fatal, nothing binds anywhere but loopback (VPNKit's publish), and at most
/// <see cref="MaxForwards"/> are held however many the guest claims.
/// </summary>
internal sealed class PortForwards
{
    public const int MaxForwards = 256;

    private readonly VpnKitServer _server;
    private readonly bool _privilegedAllowed;
    private readonly object _gate = new();
    private readonly Dictionary<(string Protocol, int HostPort), ForwardState> _states = [];
    private IReadOnlyList<ListeningPort> _guest = [];
    private IReadOnlyList<PortPublish> _static = [];

    public PortForwards(VpnKitServer server, bool privilegedAllowed)
    {
        _server = server;
        _privilegedAllowed = privilegedAllowed;
    }

    /// <summary>Raised after a change that altered what is forwarded.</summary>
    public event Action? Changed;

    public IReadOnlyList<ForwardState> States
    {
        get
        {
            lock (_gate)
            {
                return [.. _states.Values.OrderBy(s => s.HostPort).ThenBy(s => s.Protocol, StringComparer.Ordinal)];
            }
        }
    }

    public void SetGuestListeners(IReadOnlyList<ListeningPort> ports)
    {
        lock (_gate)
        {
            _guest = ports;
            Apply();
        }
        Changed?.Invoke();
    }

    public void SetStatic(IReadOnlyList<PortPublish> ports)
    {
        lock (_gate)
        {
            _static = ports;
            Apply();
        }
        Changed?.Invoke();
    }

    /// <summary>Whether a reported listener is one to forward: a wildcard or a non-loopback guest address.</summary>
    public static bool IsForwardable(ListeningPort p)
    {
        if (p.Protocol is not ("tcp" or "udp") || p.Port is < 1 or > 65535)
        {
            return false;
        }
        if (!IPAddress.TryParse(p.Address, out IPAddress? address))
        {
            return false;
        }
        return !IPAddress.IsLoopback(address);
    }

    private void Apply()
    {
        // What should be there: static forwards first (they win a host port), then the guest's listeners.
        var wanted = new Dictionary<(string, int), (int GuestPort, string Source)>();
        foreach (PortPublish p in _static)
        {
            wanted.TryAdd((p.Udp ? "udp" : "tcp", p.HostPort), (p.GuestPort, "config"));
        }
        foreach (ListeningPort p in _guest)
        {
            if (IsForwardable(p) && wanted.Count < MaxForwards)
            {
                wanted.TryAdd((p.Protocol, p.Port), (p.Port, "auto"));
            }
        }
        foreach (((string protocol, int hostPort), ForwardState state) in _states.ToList())
        {
            if (!wanted.TryGetValue((protocol, hostPort), out var w) || w.GuestPort != state.GuestPort || w.Source != state.Source)
            {
                if (state.Problem is null)
                {
                    _server.RemovePublish(protocol == "udp", hostPort);
                }
                _states.Remove((protocol, hostPort));
            }
        }
        foreach (((string protocol, int hostPort), (int guestPort, string source)) in wanted)
        {
            if (_states.TryGetValue((protocol, hostPort), out ForwardState? held) && held.Problem is null)
            {
                continue;
            }
            string? problem = hostPort < 1024 && !_privilegedAllowed
                ? $"host port {hostPort} is privileged and kit is not root"
                : _server.AddPublish(new PortPublish(hostPort, guestPort, protocol == "udp"));
            _states[(protocol, hostPort)] = new ForwardState(protocol, hostPort, guestPort, source, problem);
        }
    }
}
