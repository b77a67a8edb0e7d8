using SharpFuzz;

namespace Kit.Fuzz;

/// <summary>
/// Kit.Fuzz TARGET              run TARGET under afl-fuzz (SharpFuzz's out-of-process loop; bench/fuzz.sh)
/// Kit.Fuzz TARGET FILE...      run TARGET once on each FILE (a crash's reproducer), exit 1 if any threw
/// Kit.Fuzz --write-seeds DIR   write the seed corpora (tests/Kit.Fuzz/corpus)
/// Kit.Fuzz --list              the target names
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 2 && args[0] == "--write-seeds")
        {
            Seeds.WriteAll(args[1]);
            return 0;
        }
        if (args.Length == 1 && args[0] == "--list")
        {
            foreach (string name in FuzzTargets.Names)
            {
                Console.WriteLine(name);
            }
            return 0;
        }
        if (args.Length == 0 || !FuzzTargets.Exists(args[0]))
        {
            Console.Error.WriteLine($"usage: Kit.Fuzz TARGET [FILE...] | --write-seeds DIR | --list; targets: {string.Join(", ", FuzzTargets.Names)}");
            return 2;
        }
        string target = args[0];
        if (args.Length > 1)
        {
            int failed = 0;
            foreach (string file in args[1..])
            {
                try
                {
                    FuzzTargets.Run(target, File.ReadAllBytes(file));
                    Console.WriteLine($"ok      {file}");
                }
                catch (Exception e)
                {
                    failed++;
                    Console.WriteLine($"FAILED  {file}: {e}");
                }
            }
            return failed == 0 ? 0 : 1;
        }
        Fuzzer.OutOfProcess.Run(stream =>
        {
            using var ms = new MemoryStream();
            stream.CopyTo(ms);
            FuzzTargets.Run(target, ms.ToArray());
        });
        return 0;
    }
}
