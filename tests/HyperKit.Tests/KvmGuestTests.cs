using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Kit.HyperKit.Devices.Virtio;
using Kit.HyperKit.Vm;

namespace Kit.HyperKit.Tests;

/// <summary>
/// Freestanding guest programs (Guests/*.asm, assembled here with nasm) run on /dev/kvm under our Machine: they poke
/// the serial port, enumerate PCI, and drive virtio queues; the host side checks what they did. These need a working
/// /dev/kvm, so they run only in the nested QEMU L1 (Tier=Kvm), never on the PVM host.
/// </summary>
[Trait("Tier", "Kvm")]
public sealed class KvmGuestTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);
    private const ulong Load = 0x10000, Stack = 0x8000, Result = 0x20000;

    private static byte[] Assemble(string name)
    {
        string source = Path.Combine(AppContext.BaseDirectory, "Guests");
        string output = Path.Combine(Path.GetTempPath(), $"kit-guest-{name}-{Environment.ProcessId}.bin");
        var start = new ProcessStartInfo("nasm", ["-f", "bin", "-I", source + "/", "-o", output, Path.Combine(source, name + ".asm")])
        {
            RedirectStandardError = true,
        };
        using Process nasm = Process.Start(start)!;
        string errors = nasm.StandardError.ReadToEnd();
        nasm.WaitForExit();
        Assert.True(nasm.ExitCode == 0, $"nasm failed on {name}.asm: {errors}");
        byte[] code = File.ReadAllBytes(output);
        File.Delete(output);
        return code;
    }

    private sealed class Run(Machine machine, MachineExit exit, string console) : IDisposable
    {
        public Machine Machine { get; } = machine;

        public MachineExit Exit { get; } = exit;

        public string Console { get; } = console;

        public void Dispose() => Machine.Dispose();
    }

    private static Run Start(string name, Action<MachineOptions>? configure = null, TimeSpan? limit = null)
    {
        byte[] code = Assemble(name);
        var console = new StringBuilder();
        var options = new MachineOptions
        {
            MemoryBytes = 16UL << 20,
            DebugExitPort = true,
            Rng = false,
            ConsoleOutput = bytes =>
            {
                lock (console)
                {
                    console.Append(Encoding.ASCII.GetString(bytes));
                }
            },
        };
        configure?.Invoke(options);
        var machine = new Machine(options);
        machine.LoadProgram32(code, Load, Stack);
        MachineExit exit = machine.Run(limit ?? Limit);
        return new Run(machine, exit, console.ToString());
    }

    [Fact]
    public void SerialOutputReachesTheConsole()
    {
        using Run run = Start("serial");
        Assert.Equal(MachineExitKind.DebugExit, run.Exit.Kind);
        Assert.Equal(42, run.Exit.DebugCode);
        Assert.Equal("hello from a freestanding guest\n", run.Console);
    }

    [Fact]
    public void GuestEnumeratesPciConfigSpace()
    {
        string disk = Path.GetTempFileName();
        File.WriteAllBytes(disk, new byte[1 << 20]);
        try
        {
            using Run run = Start("pci", o =>
            {
                o.Rng = true;
                o.Disks.Add(new DiskOptions(disk));
            });
            Assert.True(run.Exit.Kind == MachineExitKind.DebugExit, run.Exit.Message);
            byte[] r = run.Machine.Memory.GetSpan(Result, 4 + 3 * 16).ToArray();
            Assert.Equal(3u, BinaryPrimitives.ReadUInt32LittleEndian(r));
            (uint Slot, uint Id, uint Class, uint BarMask) Record(int i) => (
                BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(4 + 16 * i)),
                BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(8 + 16 * i)),
                BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(12 + 16 * i)),
                BinaryPrimitives.ReadUInt32LittleEndian(r.AsSpan(16 + 16 * i)));
            Assert.Equal((0u, 0x29C08086u), (Record(0).Slot, Record(0).Id));
            Assert.Equal(0x06u, Record(0).Class >> 24);
            Assert.Equal((1u, 0x10441AF4u), (Record(1).Slot, Record(1).Id));
            Assert.Equal((2u, 0x10421AF4u), (Record(2).Slot, Record(2).Id));
            Assert.Equal(0x01u, Record(2).Class >> 24); // mass storage
            Assert.Equal(~(VirtioPciDevice.BarLength - 1), Record(1).BarMask);
            // The guest restored the BAR after sizing it.
            Assert.Equal(run.Machine.VirtioDevices[0].BarAddress(0), run.Machine.Pci[1]!.BarAddress(0));
            Assert.NotEqual(0u, run.Machine.Pci[1]!.BarAddress(0));
        }
        finally
        {
            File.Delete(disk);
        }
    }

    [Fact]
    public void GuestDrivesVirtioRng()
    {
        using Run run = Start("rng", o => o.Rng = true);
        Assert.True(run.Exit.Kind == MachineExitKind.DebugExit, run.Exit.Message);
        Assert.Equal(0, run.Exit.DebugCode);
        Span<byte> random = run.Machine.Memory.GetSpan(0x40000, 64);
        Assert.Contains(random.ToArray(), b => b != 0);
        Assert.True(run.Machine.Memory.TryReadU32(0x32004 + 4, out uint len));
        Assert.Equal(64u, len);
        Assert.Equal(VirtioStatus.Acknowledge | VirtioStatus.Driver | VirtioStatus.FeaturesOk | VirtioStatus.DriverOk,
            run.Machine.VirtioDevices[0].Status);
    }

    [Fact]
    public void GuestDrivesVirtioBlk()
    {
        string disk = Path.GetTempFileName();
        byte[] image = new byte[1 << 20];
        for (int i = 0; i < 512; i++)
        {
            image[i] = (byte)(i ^ 0x33);
        }
        File.WriteAllBytes(disk, image);
        try
        {
            using (Run run = Start("blk", o => o.Disks.Add(new DiskOptions(disk))))
            {
                Assert.True(run.Exit.Kind == MachineExitKind.DebugExit, run.Exit.Message);
                Assert.Equal(0, run.Exit.DebugCode);
                Span<byte> status = run.Machine.Memory.GetSpan(0x42000, 2);
                Assert.Equal([0, 0], status.ToArray());
                Assert.Equal(image.AsSpan(0, 512).ToArray(), run.Machine.Memory.GetSpan(0x41000, 512).ToArray());
            }
            byte[] after = File.ReadAllBytes(disk);
            Assert.All(after.AsSpan(512, 512).ToArray(), b => Assert.Equal(0x5A, b));
            Assert.Equal(0, after[1024]);
        }
        finally
        {
            File.Delete(disk);
        }
    }

    [Fact]
    public void ASpinningGuestIsStoppedByTheKick()
    {
        using Run run = Start("spin", limit: TimeSpan.FromSeconds(2));
        Assert.Equal(MachineExitKind.Timeout, run.Exit.Kind);
        Assert.True(run.Machine.Ports.UnclaimedAccesses > 0, "the guest should have hammered an unclaimed port");
    }

    [Fact]
    public void ATripleFaultEndsTheRunWithItsOwnCode()
    {
        using Run run = Start("triple");
        Assert.Equal(MachineExitKind.TripleFault, run.Exit.Kind);
        Assert.Equal(3, run.Exit.ExitCode);
        Assert.Contains("rip=", run.Exit.Message);
    }
}
