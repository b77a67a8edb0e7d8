namespace Kit.HyperKit;

/// <summary>Names this assembly for reflection (tests that check layering look it up through this type).</summary>
public static class AssemblyMarker
{
}
