#!/usr/bin/env python3
"""Opens N idle TCP connections to HOST:PORT, then prints the RSS growth of process PID (the gateway) in KiB.
Also measures request/response round trips per second and connection setup rate over the same path.
Usage: idle_conns.py HOST PORT N PID"""
import os, socket, sys, time

host, port, n, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def rss(p):
    with open(f"/proc/{p}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

# Request/response: 1-byte ping-pong on one connection, 2 s (the server echoes).
s = socket.create_connection((host, port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t0 = time.time()
while time.time() - t0 < 1:  # warm-up (JIT, caches), not counted
    s.sendall(b"x"); s.recv(1)
t0 = time.time(); rr = 0
while time.time() - t0 < 2:
    s.sendall(b"x"); s.recv(1); rr += 1
rr_rate = rr / (time.time() - t0)
s.close()

# Connection setup rate: connect + close, sequentially, 1 s.
t0 = time.time(); setups = 0
while time.time() - t0 < 1:
    s = socket.create_connection((host, port)); s.close(); setups += 1
setup_rate = setups / (time.time() - t0)

time.sleep(1)
before = rss(pid)
conns = [socket.create_connection((host, port)) for _ in range(n)]
time.sleep(2)
after = rss(pid)
print(f"setup/s={setup_rate:.0f} rr/s={rr_rate:.0f} rss_before_kib={before} rss_after_kib={after} per_conn_kib={(after-before)/n:.1f}")
for c in conns:
    c.close()
