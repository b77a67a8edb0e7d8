using Kit.NineP.Protocol;

namespace Kit.NineP.Server;

/// <summary>What one Tversion settled: the Rversion to send and, when accepted, the dialect and msize from now on.</summary>
public readonly record struct Negotiated(bool Accepted, Dialect Dialect, uint Msize, string Version);

/// <summary>
/// Tversion (version(5)) for every backend: the dialect is picked from the client's string, the msize is the client's
/// capped at the server's ceiling, and anything the server cannot serve is answered "unknown" (never Rerror).
/// </summary>
public static class VersionNegotiation
{
    /// <summary>
    /// The smallest msize any backend accepts: below it, a directory entry or a Tgetattr reply may not fit, and
    /// a client asking for less is answered "unknown".
    /// </summary>
    public const uint MinMessageSize = 4096;

    /// <param name="version">The client's version string.</param>
    /// <param name="msize">The client's msize.</param>
    /// <param name="maxMessageSize">The server's ceiling.</param>
    /// <param name="minMessageSize">The server's floor (not below <see cref="MinMessageSize"/>).</param>
    /// <param name="linuxOnly">The backend speaks 9P2000.L only (the host directory): .u and plain 9P2000 are "unknown".</param>
    public static Negotiated Negotiate(string version, uint msize, uint maxMessageSize, uint minMessageSize, bool linuxOnly)
    {
        // version(5): a suffix after a period the server does not know is an extension it may drop; "9P2000.L" and
        // "9P2000.u" are the two extensions known here, and any other "9P2000..." is served as plain 9P2000.
        Dialect dialect;
        string reply;
        if (Names(version, P9.VersionL))
        {
            dialect = Dialect.Linux;
            reply = P9.VersionL;
        }
        else if (Names(version, P9.VersionU))
        {
            dialect = Dialect.Unix;
            reply = P9.VersionU;
        }
        else if (version.StartsWith(P9.Version2000, StringComparison.Ordinal))
        {
            dialect = Dialect.Legacy;
            reply = P9.Version2000;
        }
        else
        {
            return new Negotiated(false, default, Math.Min(msize, maxMessageSize), P9.VersionUnknown);
        }
        if (linuxOnly && dialect != Dialect.Linux)
        {
            return new Negotiated(false, default, Math.Min(msize, maxMessageSize), P9.VersionUnknown);
        }
        if (msize < Math.Max(minMessageSize, MinMessageSize))
        {
            return new Negotiated(false, default, msize, P9.VersionUnknown);
        }
        return new Negotiated(true, dialect, Math.Min(msize, maxMessageSize), reply);
    }

    private static bool Names(string version, string known) =>
        version == known || (version.Length > known.Length && version.StartsWith(known, StringComparison.Ordinal) && version[known.Length] == '.');
}
