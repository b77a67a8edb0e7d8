using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Emit;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace Kit.Tests;

/// <summary>
/// design.md: "Engines are pure: VpnKit/Stack, VpnKit/Wire and the NineP codec do no I/O, start no threads and read
/// no clock (time is passed in). A test enforces it." This is that test: it decodes the IL of every method in those
/// namespaces and fails on any call into sockets, files, threads, timers or the system clock.
/// </summary>
public sealed class PureEngineTests
{
    /// <summary>Namespaces that must stay pure, by assembly. A namespace with no types yet passes trivially.</summary>
    public static TheoryData<string, string> PureNamespaces => new()
    {
        { "Kit.VpnKit", "Kit.VpnKit.Wire" },
        { "Kit.VpnKit", "Kit.VpnKit.Stack" },
        { "Kit.NineP", "Kit.NineP.Protocol" },
    };

    /// <summary>Type or member prefixes an engine must not touch.</summary>
    private static readonly string[] s_forbidden =
    [
        "System.Net.Sockets.",
        "System.IO.File",
        "System.IO.Directory",
        "System.IO.FileStream",
        "System.Threading.Thread",
        "System.Threading.Timer",
        "System.Threading.Tasks.Task::Run",
        "System.Threading.ThreadPool",
        "System.DateTime::get_Now",
        "System.DateTime::get_UtcNow",
        "System.DateTimeOffset::get_Now",
        "System.DateTimeOffset::get_UtcNow",
        "System.Diagnostics.Stopwatch",
        "System.Environment::get_TickCount",
        "System.TimeProvider::get_System",
        "System.Console",
    ];

    [Theory]
    [MemberData(nameof(PureNamespaces))]
    public void EngineCallsNoIoThreadOrClock(string assemblyName, string ns)
    {
        string path = Assembly.Load(assemblyName).Location;
        using var pe = new PEReader(File.OpenRead(path));
        MetadataReader md = pe.GetMetadataReader();
        var violations = new List<string>();

        foreach (TypeDefinitionHandle th in md.TypeDefinitions)
        {
            TypeDefinition type = md.GetTypeDefinition(th);
            string typeNs = NamespaceOf(md, type);
            if (typeNs != ns && !typeNs.StartsWith(ns + ".", StringComparison.Ordinal))
            {
                continue;
            }
            foreach (MethodDefinitionHandle mh in type.GetMethods())
            {
                MethodDefinition method = md.GetMethodDefinition(mh);
                if (method.RelativeVirtualAddress == 0)
                {
                    continue;
                }
                ImmutableArray<byte> il = pe.GetMethodBody(method.RelativeVirtualAddress).GetILContent();
                foreach (string target in ReferencedMembers(md, il))
                {
                    foreach (string bad in s_forbidden)
                    {
                        if (target.StartsWith(bad, StringComparison.Ordinal))
                        {
                            violations.Add($"{md.GetString(type.Name)}.{md.GetString(method.Name)} uses {target}");
                        }
                    }
                }
            }
        }

        Assert.True(violations.Count == 0, string.Join(Environment.NewLine, violations));
    }

    [Fact]
    public void TheScannerSeesAClockRead()
    {
        // Guards the guard: this very method reads the clock, so the scanner must report it.
        _ = DateTime.UtcNow;
        string path = typeof(PureEngineTests).Assembly.Location;
        using var pe = new PEReader(File.OpenRead(path));
        MetadataReader md = pe.GetMetadataReader();
        MethodDefinition self = md.MethodDefinitions.Select(md.GetMethodDefinition)
            .Single(m => md.GetString(m.Name) == nameof(TheScannerSeesAClockRead));
        IEnumerable<string> targets = ReferencedMembers(md, pe.GetMethodBody(self.RelativeVirtualAddress).GetILContent());
        Assert.Contains("System.DateTime::get_UtcNow", targets);
    }

    private static string NamespaceOf(MetadataReader md, TypeDefinition type)
    {
        while (type.IsNested)
        {
            type = md.GetTypeDefinition(type.GetDeclaringType());
        }
        return md.GetString(type.Namespace);
    }

    private static readonly Dictionary<ushort, OpCode> s_opcodes = typeof(OpCodes)
        .GetFields(BindingFlags.Public | BindingFlags.Static)
        .Select(f => (OpCode)f.GetValue(null)!)
        .ToDictionary(o => unchecked((ushort)o.Value));

    /// <summary>Walks IL and yields "Namespace.Type::Member" (or "Namespace.Type") for every token operand.</summary>
    private static IEnumerable<string> ReferencedMembers(MetadataReader md, ImmutableArray<byte> il)
    {
        int i = 0;
        while (i < il.Length)
        {
            ushort value = il[i];
            i++;
            if (value == 0xFE)
            {
                value = (ushort)(0xFE00 | il[i]);
                i++;
            }
            if (!s_opcodes.TryGetValue(value, out OpCode op))
            {
                yield break;
            }
            switch (op.OperandType)
            {
                case OperandType.InlineNone:
                    break;
                case OperandType.ShortInlineBrTarget:
                case OperandType.ShortInlineI:
                case OperandType.ShortInlineVar:
                    i += 1;
                    break;
                case OperandType.InlineVar:
                    i += 2;
                    break;
                case OperandType.InlineI8:
                case OperandType.InlineR:
                    i += 8;
                    break;
                case OperandType.InlineSwitch:
                    int n = BitConverter.ToInt32(il.AsSpan(i, 4));
                    i += 4 + (4 * n);
                    break;
                case OperandType.InlineMethod:
                case OperandType.InlineField:
                case OperandType.InlineType:
                case OperandType.InlineTok:
                    int token = BitConverter.ToInt32(il.AsSpan(i, 4));
                    i += 4;
                    string? name = Describe(md, MetadataTokens.EntityHandle(token));
                    if (name is not null)
                    {
                        yield return name;
                    }
                    break;
                default:
                    i += 4;
                    break;
            }
        }
    }

    private static string? Describe(MetadataReader md, EntityHandle handle) => handle.Kind switch
    {
        HandleKind.MemberReference => DescribeMember(md, md.GetMemberReference((MemberReferenceHandle)handle)),
        HandleKind.MethodSpecification => Describe(md, md.GetMethodSpecification((MethodSpecificationHandle)handle).Method),
        HandleKind.TypeReference => TypeName(md, (TypeReferenceHandle)handle),
        _ => null,
    };

    private static string? DescribeMember(MetadataReader md, MemberReference member)
    {
        string? parent = member.Parent.Kind switch
        {
            HandleKind.TypeReference => TypeName(md, (TypeReferenceHandle)member.Parent),
            HandleKind.TypeSpecification => GenericTypeName(md, md.GetTypeSpecification((TypeSpecificationHandle)member.Parent)),
            _ => null,
        };
        return parent is null ? null : $"{parent}::{md.GetString(member.Name)}";
    }

    private static string TypeName(MetadataReader md, TypeReferenceHandle handle)
    {
        TypeReference t = md.GetTypeReference(handle);
        string ns = md.GetString(t.Namespace);
        if (t.ResolutionScope.Kind == HandleKind.TypeReference)
        {
            return $"{TypeName(md, (TypeReferenceHandle)t.ResolutionScope)}+{md.GetString(t.Name)}";
        }
        return ns.Length == 0 ? md.GetString(t.Name) : $"{ns}.{md.GetString(t.Name)}";
    }

    /// <summary>For a generic instantiation such as List&lt;int&gt;, the name of the generic type itself.</summary>
    private static string? GenericTypeName(MetadataReader md, TypeSpecification spec)
    {
        BlobReader blob = md.GetBlobReader(spec.Signature);
        if (blob.ReadSignatureTypeCode() != SignatureTypeCode.GenericTypeInstance)
        {
            return null;
        }
        blob.ReadSignatureTypeCode();
        EntityHandle generic = blob.ReadTypeHandle();
        return generic.Kind == HandleKind.TypeReference ? TypeName(md, (TypeReferenceHandle)generic) : null;
    }
}
