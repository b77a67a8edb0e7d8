using System.Buffers.Binary;

namespace Kit.Agent;

/// <summary>
/// Watches /dev/input/event* for the ACPI power button (QEMU's system_powerdown, which `kit down` sends, reaches the
/// kernel's button driver and comes out as KEY_POWER) and then shuts down cleanly. Devices are looked for at start
/// and every few seconds, since the button module may load after the agent starts.
/// </summary>
internal static class PowerButton
{
    // linux/input-event-codes.h; struct input_event is { struct timeval; u16 type; u16 code; s32 value } = 24 bytes on LP64.
    private const int EventSize = 24, EV_KEY = 1, KEY_POWER = 116, Pressed = 1;
    private static readonly TimeSpan Rescan = TimeSpan.FromSeconds(3);

    /// <summary>Watches the event devices in <paramref name="inputDirectory"/> (/dev/input; tests give a directory of FIFOs).</summary>
    public static void Start(string inputDirectory)
    {
        var thread = new Thread(() => Scan(inputDirectory)) { IsBackground = true, Name = "power-button" };
        thread.Start();
    }

    private static void Scan(string inputDirectory)
    {
        var watched = new HashSet<string>(StringComparer.Ordinal);
        while (true)
        {
            try
            {
                foreach (string device in Directory.Exists(inputDirectory) ? Directory.GetFiles(inputDirectory, "event*") : [])
                {
                    bool added;
                    lock (watched)
                    {
                        added = watched.Add(device);
                    }
                    if (added)
                    {
                        var reader = new Thread(() => Watch(device, watched)) { IsBackground = true, Name = "input-event" };
                        reader.Start();
                    }
                }
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                Log.Line($"power button: scanning {inputDirectory}: {e.Message}");
            }
            Thread.Sleep(Rescan);
        }
    }

    private static void Watch(string device, HashSet<string> watched)
    {
        try
        {
            using var input = new FileStream(device, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, bufferSize: 0);
            byte[] events = new byte[EventSize * 16];
            while (true)
            {
                int n = input.Read(events, 0, events.Length);
                if (n <= 0)
                {
                    break;
                }
                for (int at = 0; at + EventSize <= n; at += EventSize)
                {
                    if (IsPowerPress(events.AsSpan(at, EventSize)))
                    {
                        PowerOff.Start($"power button ({device})");
                    }
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // The device went away or cannot be read; a later scan may find it again.
        }
        lock (watched)
        {
            watched.Remove(device);
        }
    }

    internal static bool IsPowerPress(ReadOnlySpan<byte> inputEvent) =>
        BinaryPrimitives.ReadUInt16LittleEndian(inputEvent[16..]) == EV_KEY
        && BinaryPrimitives.ReadUInt16LittleEndian(inputEvent[18..]) == KEY_POWER
        && BinaryPrimitives.ReadInt32LittleEndian(inputEvent[20..]) == Pressed;
}
