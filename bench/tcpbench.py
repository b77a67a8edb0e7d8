#!/usr/bin/env python3
"""Tiny TCP benchmark pair for bench/vpnkit-iperf.sh (stdlib only, bounded loops).

Server modes (run on the host, bound to 127.0.0.1 only):
  server PORT          echo server: every byte received is sent back (request/response), also
                       accepts and closes (connection rate) and holds idle connections open.
Client modes (run inside the namespace):
  rr HOST PORT SECS [GWPID|ppid]
                       one connection, 64-byte request, 64-byte response, TCP_NODELAY; prints round trips/s,
                       and with a gateway pid (ppid = our parent, which `kit net run` is) also that process's CPU
                       time (user+system, all threads) and context switches per round trip, figures that move
                       much less with the machine's load than the rate does
  conn HOST PORT SECS [GWPID|ppid]
                       connect, send 1 byte, read the echo, close; prints connections/s (and, with a gateway pid,
                       its CPU time and context switches per connection, as rr does), and how long the first
                       connection (the gateway's cold one) took
  hold HOST PORT N SECS READYFILE   write READYFILE.0, wait 3 s, open N idle connections, write READYFILE, sleep SECS, close them
HTTP/1.1 (for the inspector's HTTP recording cost, bench/inspector-http.sh):
  httpserver PORT      answers every request on a keep-alive connection with 200 and a 64-byte body (127.0.0.1 only)
  http HOST PORT SECS [GWPID|ppid]
                       GET requests on one keep-alive connection, one at a time; prints requests/s
  httpconn HOST PORT SECS [GWPID|ppid]
                       one GET per connection (as wget or curl do); prints requests/s
"""
import os, socket, sys, threading, time

MAX_ITER = 2_000_000  # bound on every loop


def serve(port: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)

    def handle(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                c.sendall(b)
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = ls.accept()
        t = threading.Thread(target=handle, args=(c,), daemon=True, name="h")
        t.start()


HTTP_BODY = b"k" * 64
HTTP_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(HTTP_BODY) + HTTP_BODY
HTTP_REQUEST = b"GET /bench/item?id=1 HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: tcpbench\r\nAccept: */*\r\n\r\n"


def http_serve(port: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)

    def handle(c: socket.socket) -> None:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                b = c.recv(65536)
                if not b:
                    break
                buf += b
                if len(buf) > 1 << 20:
                    break  # not a request this server understands: drop the connection
                # Requests without bodies (GET): one response per blank line, pipelined ones included.
                while (i := buf.find(b"\r\n\r\n")) >= 0:
                    buf = buf[i + 4:]
                    c.sendall(HTTP_RESPONSE)
        except OSError:
            pass
        finally:
            c.close()

    while True:
        c, _ = ls.accept()
        threading.Thread(target=handle, args=(c,), daemon=True, name="h").start()


def http_exchange(s: socket.socket) -> None:
    """One GET and its whole response (head, then Content-Length bytes of body)."""
    s.sendall(HTTP_REQUEST)
    buf = b""
    while (i := buf.find(b"\r\n\r\n")) < 0:
        b = s.recv(65536)
        if not b:
            raise OSError("peer closed")
        buf += b
    length = 0
    for line in buf[:i].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    recv_exact(s, length - (len(buf) - i - 4))


def http(host: str, port: int, secs: float, gw: int, per_connection: bool) -> None:
    s = None
    n = 0
    c0 = gateway_cost(gw) if gw else (0.0, 0)
    t0 = time.perf_counter(); end = t0 + secs
    while n < MAX_ITER:
        if s is None:
            s = socket.create_connection((host, port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        http_exchange(s)
        n += 1
        if per_connection:
            s.close(); s = None
        if time.perf_counter() >= end:
            break
    dt = time.perf_counter() - t0
    c1 = gateway_cost(gw) if gw else (0.0, 0)
    if s is not None:
        s.close()
    extra = f" {(c1[0] - c0[0]) / n * 1e6:.1f} gw_cpu_us_per_request" if gw else ""
    print(f"{n / dt:.0f} requests_per_s{extra}")


def recv_exact(s: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        b = s.recv(n - got)
        if not b:
            raise OSError("peer closed")
        got += len(b)


def gateway_cost(pid: int) -> tuple[float, int]:
    """CPU seconds and context switches (voluntary + involuntary) of every thread of pid so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        switches += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return cpu, switches


def rr(host: str, port: int, secs: float, gw: int = 0) -> None:
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = b"x" * 64
    for _ in range(200):  # warm-up
        s.sendall(msg); recv_exact(s, 64)
    n = 0
    c0 = gateway_cost(gw) if gw else (0.0, 0)
    t0 = time.perf_counter(); end = t0 + secs
    while n < MAX_ITER:
        s.sendall(msg); recv_exact(s, 64); n += 1
        if (n & 63) == 0 and time.perf_counter() >= end:
            break
    dt = time.perf_counter() - t0
    c1 = gateway_cost(gw) if gw else (0.0, 0)
    s.close()
    extra = f" {(c1[0] - c0[0]) / n * 1e6:.1f} gw_cpu_us_per_rt {(c1[1] - c0[1]) / n:.2f} gw_switches_per_rt" if gw else ""
    print(f"{n / dt:.0f} round_trips_per_s {dt / n * 1e6:.1f} us_per_round_trip{extra}")


def conn(host: str, port: int, secs: float, gw: int = 0) -> None:
    # The first connection after the gateway started (cold: nothing cached, no code warmed) is timed on its own.
    t = time.perf_counter()
    s = socket.create_connection((host, port), timeout=10)
    s.sendall(b"x"); recv_exact(s, 1)
    s.close()
    first_ms = (time.perf_counter() - t) * 1e3
    n = 0
    c0 = gateway_cost(gw) if gw else (0.0, 0)
    t0 = time.perf_counter(); end = t0 + secs
    while n < MAX_ITER:
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"x"); recv_exact(s, 1)
        s.close(); n += 1
        if time.perf_counter() >= end:
            break
    dt = time.perf_counter() - t0
    c1 = gateway_cost(gw) if gw else (0.0, 0)
    extra = f" {(c1[0] - c0[0]) / n * 1e6:.1f} gw_cpu_us_per_conn {(c1[1] - c0[1]) / n:.2f} gw_switches_per_conn" if gw else ""
    print(f"{n / dt:.0f} connections_per_s{extra} {first_ms:.2f} first_conn_ms")


def hold(host: str, port: int, count: int, secs: float, ready: str) -> None:
    with open(ready + ".0", "w") as f:
        f.write("0")
    time.sleep(3)  # the caller samples the gateway's RSS with no connections open
    socks = []
    for _ in range(min(count, 10000)):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(b"x"); recv_exact(s, 1)  # proves the connection is fully set up end to end
        socks.append(s)
    with open(ready, "w") as f:
        f.write(str(len(socks)))
    time.sleep(secs)
    for s in socks:
        s.close()


if __name__ == "__main__":
    m = sys.argv[1]
    if m == "server":
        serve(int(sys.argv[2]))
    elif m == "rr":
        gw = sys.argv[5] if len(sys.argv) > 5 else "0"
        rr(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), os.getppid() if gw == "ppid" else int(gw))
    elif m == "conn":
        gw = sys.argv[5] if len(sys.argv) > 5 else "0"
        conn(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), os.getppid() if gw == "ppid" else int(gw))
    elif m == "httpserver":
        http_serve(int(sys.argv[2]))
    elif m in ("http", "httpconn"):
        gw = sys.argv[5] if len(sys.argv) > 5 else "0"
        http(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), os.getppid() if gw == "ppid" else int(gw), m == "httpconn")
    elif m == "hold":
        hold(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6])
    else:
        sys.exit("usage: see the docstring")
