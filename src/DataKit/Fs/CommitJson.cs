using System.Text.Json.Serialization;

namespace Kit.DataKit.Fs;

/// <summary>The body of <c>/commits/HASH</c>: our own JSON rendering of a commit (clients only check existence).</summary>
internal sealed record CommitJson(
    [property: JsonPropertyName("hash")] string Hash,
    [property: JsonPropertyName("tree")] string Tree,
    [property: JsonPropertyName("parents")] string[] Parents,
    [property: JsonPropertyName("message")] string Message,
    [property: JsonPropertyName("date")] long Date);

/// <summary>Source-generated serializer for <see cref="CommitJson"/>: no reflection, so the NativeAOT kit can write it.</summary>
[JsonSerializable(typeof(CommitJson))]
internal sealed partial class DataKitJson : JsonSerializerContext;
