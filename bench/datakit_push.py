#!/usr/bin/env python3
"""DataKit push latency over 9P2000.L with bench/p9l.py.

  auto ADDR REMOTE URL REFFILE N     remotes/REMOTE/push-branches names master; N commits; each one is timed from the
                                     return of its ctl "commit" write to REFFILE (the remote's loose ref file, read by
                                     polling every 1 ms) holding the new head
  cmd ADDR REMOTE URL REFFILE N      N commits, each pushed by writing "master" to remotes/REMOTE/push; timed from that
                                     write's start to its return (the ref is checked to be there)

Prints median and p90 in milliseconds.
"""
import statistics, sys, time, os
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from p9l import Client, O_TRUNC, O_WRONLY  # noqa: E402

MAX_N = 10_000


def commit(c: Client, i: int, tag: str) -> None:
    tdir = "branch/master/transactions"
    name = f"p{tag}-{i}"
    c.mkdir(tdir, name)
    c.create(f"{tdir}/{name}/rw", f"push-{i % 4}", f"{tag} {i}\n".encode())
    c.write_file(f"{tdir}/{name}/ctl", b"commit")


def put(c: Client, path: str, data: bytes) -> None:
    """As `echo data > path`: open with O_TRUNC, then one write."""
    f = c.walk(path)
    try:
        c.lopen(f, O_WRONLY | O_TRUNC)
        if data:
            c.write(f, data)
    finally:
        c.clunk(f)


def head(c: Client) -> str:
    return c.read_file("branch/master/head").decode().strip()


def ref(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def report(lat: list) -> None:
    lat.sort()
    print(f"median_ms {statistics.median(lat) * 1e3:.1f} p90_ms {lat[int(len(lat) * 0.9)] * 1e3:.1f} "
          f"min_ms {lat[0] * 1e3:.1f} n {len(lat)}")


def main() -> None:
    mode, addr, remote, url, reffile, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], min(int(sys.argv[6]), MAX_N)
    c = Client(addr, "")
    c.mkdir("branch", "master")
    c.mkdir("remotes", remote)
    put(c, f"remotes/{remote}/url", url.encode())
    tag = f"{os.getpid()}-{int(time.time())}"
    lat = []
    if mode == "auto":
        put(c, f"remotes/{remote}/push-branches", b"master\n")
    for i in range(n + 1):  # the first round warms up (process start, first connection) and is not counted
        if mode == "auto":
            commit(c, i, tag)
            t0 = time.perf_counter()
            want = head(c)
            deadline = t0 + 30
            while ref(reffile) != want:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"the remote did not get {want} within 30 s")
                time.sleep(0.001)
            dt = time.perf_counter() - t0
        else:
            commit(c, i, tag)
            want = head(c)
            t0 = time.perf_counter()
            put(c, f"remotes/{remote}/push", b"master")
            dt = time.perf_counter() - t0
            if ref(reffile) != want:
                raise SystemExit("push returned but the remote lacks the head")
        if i > 0:
            lat.append(dt)
    if mode == "auto":
        put(c, f"remotes/{remote}/push-branches", b"")  # remotes are server-wide: stop before the next row
    c.close()
    report(lat)


if __name__ == "__main__":
    if len(sys.argv) != 7 or sys.argv[1] not in ("auto", "cmd"):
        sys.exit(__doc__)
    main()
