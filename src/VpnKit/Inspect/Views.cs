using System.Text.Json.Serialization;
using Kit.VpnKit.Wire;

namespace Kit.VpnKit.Inspect;

/// <summary>A flow as the API shows it (<c>/api/flows</c>).</summary>
public sealed record FlowView(long Id, string Proto, string Guest, int GuestPort, string Remote, int RemotePort, string? Name, bool Inbound,
    DateTimeOffset Start, DateTimeOffset? End, double DurationMs, long BytesOut, long BytesIn, long PacketsOut, long PacketsIn, int RttMs,
    string? Ended, string? App, string? Sni, string? Alpn, string? HttpHost, string? Note)
{
    public static FlowView Of(FlowRecord f) => new(f.Id, f.Proto, f.GuestIp.ToString(), f.GuestPort, f.RemoteIp.ToString(), f.RemotePort,
        f.Name, f.Inbound, f.Start, f.End, Math.Round(f.End is { } e ? (e - f.Start).TotalMilliseconds : (DateTimeOffset.UtcNow - f.Start).TotalMilliseconds, 3),
        f.BytesOut, f.BytesIn, f.PacketsOut, f.PacketsIn, f.RttMs, f.EndReason == FlowEnd.None ? null : f.EndReason.ToString().ToLowerInvariant(),
        f.App, f.Sni, f.Alpn, f.HttpHost, f.Note);
}

/// <summary>An HTTP exchange as the API shows it (<c>/api/http</c>); times are milliseconds from the request's first byte.</summary>
public sealed record HttpView(long Id, long FlowId, string Guest, string Remote, int RemotePort, DateTimeOffset Start, string Method, string? Host,
    string Path, string Version, int Status, string? Reason, long RequestHeaderBytes, long RequestBodyBytes, long ResponseHeaderBytes,
    long ResponseBodyBytes, double ConnectMs, double? SentMs, double? FirstByteMs, double? DoneMs, string State, string? Note)
{
    public static HttpView Of(HttpExchange x)
    {
        FlowRecord f = x.Flow;
        string state = x.State == "pending" && f.EndReason != FlowEnd.None ? "incomplete" : x.State;
        return new(x.Id, f.Id, f.GuestIp.ToString(), f.RemoteIp.ToString(), f.RemotePort, x.Start, x.Method, x.Host, x.Target, x.Version,
            x.Status, x.Reason, x.RequestHeaderBytes, x.RequestBodyBytes, x.ResponseHeaderBytes, x.ResponseBodyBytes, Math.Round(x.ConnectMs, 3),
            Ms(x, x.RequestDoneTicks), Ms(x, x.FirstByteTicks), Ms(x, x.DoneTicks), state, x.Note);
    }

    private static double? Ms(HttpExchange x, long ticks) => ticks == 0 ? null : Math.Round(Inspector.ElapsedMs(x.StartTicks, ticks), 3);
}

// HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/): the fields the format requires, headers and bodies left
// empty (the inspector keeps neither), sizes and timings filled in.
public sealed record Har(HarLog Log);

public sealed record HarLog(string Version, HarCreator Creator, IReadOnlyList<HarEntry> Entries);

public sealed record HarCreator(string Name, string Version);

public sealed record HarEntry(string StartedDateTime, double Time, HarRequest Request, HarResponse Response, HarCache Cache, HarTimings Timings,
    string ServerIPAddress, string Connection, [property: JsonPropertyName("_guest")] string Guest);

public sealed record HarRequest(string Method, string Url, string HttpVersion, IReadOnlyList<HarNameValue> Cookies, IReadOnlyList<HarNameValue> Headers,
    IReadOnlyList<HarNameValue> QueryString, long HeadersSize, long BodySize);

public sealed record HarResponse(int Status, string StatusText, string HttpVersion, IReadOnlyList<HarNameValue> Cookies, IReadOnlyList<HarNameValue> Headers,
    HarContent Content, string RedirectURL, long HeadersSize, long BodySize);

public sealed record HarNameValue(string Name, string Value);

public sealed record HarContent(long Size, string MimeType);

public sealed record HarCache;

/// <summary>HAR timings: -1 where it does not apply (blocked, dns, ssl); send, wait, receive always present.</summary>
public sealed record HarTimings(double Blocked, double Dns, double Connect, double Send, double Wait, double Receive, double Ssl);

public static class HarBuilder
{
    public static Har Build(IReadOnlyList<HttpExchange> exchanges, string version)
    {
        var entries = new List<HarEntry>(exchanges.Count);
        foreach (HttpExchange x in exchanges)
        {
            HttpView v = HttpView.Of(x);
            double sent = v.SentMs ?? 0;
            double first = v.FirstByteMs ?? sent;
            double done = v.DoneMs ?? first;
            string host = v.Host ?? (v.RemotePort == 80 ? v.Remote : $"{v.Remote}:{v.RemotePort}");
            string path = v.Path.StartsWith('/') ? v.Path : "/" + v.Path;
            string url = v.Path.StartsWith("http://", StringComparison.OrdinalIgnoreCase) ? v.Path : $"http://{host}{path}";
            entries.Add(new HarEntry(v.Start.ToString("o", System.Globalization.CultureInfo.InvariantCulture), Math.Round(v.ConnectMs + done, 3),
                new HarRequest(v.Method, url, v.Version, [], [], [], v.RequestHeaderBytes, v.RequestBodyBytes),
                new HarResponse(v.Status, v.Reason ?? "", v.Version, [], [], new HarContent(v.ResponseBodyBytes, ""), "", v.Status == 0 ? -1 : v.ResponseHeaderBytes,
                    v.Status == 0 ? -1 : v.ResponseBodyBytes),
                new HarCache(), new HarTimings(-1, -1, v.ConnectMs > 0 ? v.ConnectMs : -1, sent, Math.Round(first - sent, 3), Math.Round(done - first, 3), -1),
                v.Remote, v.FlowId.ToString(System.Globalization.CultureInfo.InvariantCulture), v.Guest));
        }
        return new Har(new HarLog("1.2", new HarCreator("kit", version), entries));
    }
}

/// <summary>Source-generated JSON for everything the inspector serves (NativeAOT: no reflection).</summary>
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase, DefaultIgnoreCondition = JsonIgnoreCondition.Never)]
[JsonSerializable(typeof(List<FlowView>))]
[JsonSerializable(typeof(List<DnsEntry>))]
[JsonSerializable(typeof(List<HttpView>))]
[JsonSerializable(typeof(Har))]
[JsonSerializable(typeof(InspectEvent))]
public sealed partial class InspectJson : JsonSerializerContext;
