#!/usr/bin/env python3
"""DataKit / diod operation benchmarks over 9P2000.L with bench/p9l.py (one client for both servers).

  small ADDR ANAME DIR N          read N small files DIR/fNNNNN (walk+lopen+read+clunk) and stat them
                                  (walk+getattr+clunk); prints reads/s and stats/s
  txn ADDR BRANCH N SUBDIR        N transactions: mkdir transactions/T, create rw/SUBDIR/<file>, write "commit" to ctl;
                                  prints transactions/s and the median time of the commit write alone
  latency ADDR BRANCH N           commit-to-tree.live: a second connection keeps a read on watch/tree.live in flight;
                                  prints the median and p90 time from sending "commit" to the watcher's reply
"""
import statistics, struct, sys, threading, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from p9l import Client, TREAD, O_RDONLY  # noqa: E402

MAX_N = 100_000


def small(addr: str, aname: str, d: str, n: int) -> None:
    n = min(n, MAX_N)
    c = Client(addr, aname)
    names = [f"{d}/f{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    total = 0
    for i, p in enumerate(names):
        try:
            total += len(c.read_file(p))
        except Exception as e:  # report which file failed, then fail the measurement
            print(f"read {p} (#{i}) failed: {e}", file=sys.stderr)
            raise
    t1 = time.perf_counter()
    for p in names:
        c.stat(p)
    t2 = time.perf_counter()
    c.close()
    print(f"reads_per_s {n / (t1 - t0):.0f} stats_per_s {n / (t2 - t1):.0f} bytes {total}")


def one_txn(c: Client, branch: str, name: str, subdir: str, data: bytes, timings: list) -> None:
    tdir = f"branch/{branch}/transactions"
    c.mkdir(tdir, name)
    rw = f"{tdir}/{name}/rw" + (f"/{subdir}" if subdir else "")
    c.create(rw, f"bench-{name}", data)
    t = time.perf_counter()
    c.write_file(f"{tdir}/{name}/ctl", b"commit")
    timings.append(time.perf_counter() - t)


def txn(addr: str, branch: str, n: int, subdir: str) -> None:
    n = min(n, MAX_N)
    c = Client(addr, "")
    tag = f"{os.getpid()}-{int(time.time())}"
    commits = []
    one_txn(c, branch, f"w{tag}", subdir, b"warm-up\n", [])
    t0 = time.perf_counter()
    for i in range(n):
        one_txn(c, branch, f"t{tag}-{i}", subdir, b"value %d\n" % i, commits)
    dt = time.perf_counter() - t0
    c.close()
    print(f"txn_per_s {n / dt:.1f} commit_median_ms {statistics.median(commits) * 1e3:.2f} "
          f"commit_p90_ms {sorted(commits)[int(len(commits) * 0.9)] * 1e3:.2f}")


def latency(addr: str, branch: str, n: int) -> None:
    n = min(n, 10_000)
    w = Client(addr, "")
    c = Client(addr, "")
    f = w.walk(f"branch/{branch}/watch/tree.live")
    w.lopen(f, O_RDONLY)
    first = w.rpc(TREAD, struct.pack("<IQI", f, 0, 4096))
    offset = struct.unpack_from("<I", first)[0]
    tag = f"{os.getpid()}-{int(time.time())}"
    lat = []
    for i in range(n):
        w.send(TREAD, struct.pack("<IQI", f, offset, 4096), tag=2)
        got = {}

        def reader() -> None:
            # A stream read at the end of the current value answers 0 bytes once (end of that value); the next
            # read at the same offset blocks until the value changes.
            for _ in range(100):
                r = w.recv_reply(TREAD)
                k = struct.unpack_from("<I", r)[0]
                if k > 0:
                    got["t"] = time.perf_counter()
                    got["n"] = k
                    return
                w.send(TREAD, struct.pack("<IQI", f, offset, 4096), tag=2)

        th = threading.Thread(target=reader)
        th.start()
        tdir = f"branch/{branch}/transactions"
        name = f"l{tag}-{i}"
        c.mkdir(tdir, name)
        c.create(f"{tdir}/{name}/rw", f"lat-{i % 4}", f"{tag} {i}\n".encode())  # unique: the root tree must change
        ctl = c.walk(f"{tdir}/{name}/ctl")
        c.lopen(ctl, 1)
        t0 = time.perf_counter()
        c.write(ctl, b"commit")
        c.clunk(ctl)
        th.join(timeout=30)
        if "t" not in got:
            raise SystemExit("tree.live did not wake within 30 s")
        lat.append(got["t"] - t0)
        offset += got["n"]
    lat.sort()
    print(f"latency_median_ms {statistics.median(lat) * 1e3:.2f} p90_ms {lat[int(len(lat) * 0.9)] * 1e3:.2f} "
          f"min_ms {lat[0] * 1e3:.2f} n {n}")


if __name__ == "__main__":
    m = sys.argv[1]
    if m == "small":
        small(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif m == "txn":
        txn(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "")
    elif m == "latency":
        latency(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
