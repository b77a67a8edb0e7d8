#!/usr/bin/env python3
"""A minimal synchronous 9P2000.L client (stdlib only) for bench/datakit.sh.

The same client talks to `kit data serve` and to diod, so per-operation figures are comparable.
Messages: Linux include/net/9p/9p.h numbering; layouts from the 9P2000.L protocol description (diod's protocol.md).
One outstanding request at a time, except `send`/`recv_reply` which the latency benchmark uses to keep one blocking
read in flight on a second connection.
"""
import socket, struct, sys, time

TLERROR, TLOPEN, TLCREATE, TGETATTR, TMKDIR = 7, 12, 14, 24, 72
TVERSION, TATTACH, TWALK, TREAD, TWRITE, TCLUNK = 100, 104, 110, 116, 118, 120
NOFID = 0xFFFFFFFF
O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0, 1, 2, 0o100, 0o1000
GETATTR_BASIC = 0x7FF


class P9Error(Exception):
    pass


def _s(v: str) -> bytes:
    b = v.encode()
    return struct.pack("<H", len(b)) + b


class Client:
    def __init__(self, addr: str, aname: str = "", msize: int = 65536, uname: str = "root"):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_fid = 1
        self.free = []
        r = self.rpc(TVERSION, struct.pack("<I", msize) + _s("9P2000.L"), tag=0xFFFF)
        self.msize = struct.unpack_from("<I", r)[0]
        ver = r[6:6 + struct.unpack_from("<H", r, 4)[0]].decode()
        if ver != "9P2000.L":
            raise P9Error("server speaks " + ver)
        self.root = self.fid()
        self.rpc(TATTACH, struct.pack("<II", self.root, NOFID) + _s(uname) + _s(aname) + struct.pack("<I", 0))

    def fid(self) -> int:
        if self.free:
            return self.free.pop()
        f = self.next_fid
        self.next_fid += 1
        return f

    # --- framing -----------------------------------------------------------------------------------------
    def send(self, mtype: int, body: bytes, tag: int = 1) -> None:
        self.sock.sendall(struct.pack("<IBH", 7 + len(body), mtype, tag) + body)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            b = self.sock.recv(n - len(buf))
            if not b:
                raise P9Error("connection closed")
            buf += b
        return bytes(buf)

    def recv_reply(self, mtype: int) -> bytes:
        size, rtype, _tag = struct.unpack("<IBH", self._recv_exact(7))
        body = self._recv_exact(size - 7)
        if rtype == TLERROR:
            raise P9Error("errno %d" % struct.unpack_from("<I", body)[0])
        if rtype != mtype + 1:
            raise P9Error("unexpected reply type %d to %d" % (rtype, mtype))
        return body

    def rpc(self, mtype: int, body: bytes, tag: int = 1) -> bytes:
        self.send(mtype, body, tag)
        return self.recv_reply(mtype)

    # --- operations --------------------------------------------------------------------------------------
    def walk(self, path: str, start: int = -1) -> int:
        names = [p for p in path.split("/") if p]
        nf = self.fid()
        src = self.root if start < 0 else start
        if not names:
            self.rpc(TWALK, struct.pack("<IIH", src, nf, 0))
            return nf
        for i in range(0, len(names), 16):  # MAXWELEM = 16
            chunk = names[i:i + 16]
            r = self.rpc(TWALK, struct.pack("<IIH", src if i == 0 else nf, nf, len(chunk)) + b"".join(_s(n) for n in chunk))
            if struct.unpack_from("<H", r)[0] != len(chunk):
                if i > 0:
                    self.clunk(nf)
                else:
                    self.free.append(nf)
                raise P9Error("walk: no such file " + path)
        return nf

    def clunk(self, fid: int) -> None:
        self.rpc(TCLUNK, struct.pack("<I", fid))
        self.free.append(fid)

    def lopen(self, fid: int, flags: int) -> None:
        self.rpc(TLOPEN, struct.pack("<II", fid, flags))

    def getattr(self, fid: int) -> int:
        r = self.rpc(TGETATTR, struct.pack("<IQ", fid, GETATTR_BASIC))
        return struct.unpack_from("<Q", r, 8 + 13 + 4 + 4 + 4 + 8 + 8)[0]  # size

    def read_all(self, fid: int) -> bytes:
        out = bytearray()
        count = self.msize - 24  # P9_IOHDRSZ: diod answers EIO to a larger count
        while True:
            r = self.rpc(TREAD, struct.pack("<IQI", fid, len(out), count))
            n = struct.unpack_from("<I", r)[0]
            if n == 0:
                return bytes(out)
            out += r[4:4 + n]

    def write(self, fid: int, data: bytes, offset: int = 0) -> None:
        r = self.rpc(TWRITE, struct.pack("<IQI", fid, offset, len(data)) + data)
        if struct.unpack_from("<I", r)[0] != len(data):
            raise P9Error("short write")

    def mkdir(self, dirpath: str, name: str) -> None:
        d = self.walk(dirpath)
        try:
            self.rpc(TMKDIR, struct.pack("<I", d) + _s(name) + struct.pack("<II", 0o755, 0))
        finally:
            self.clunk(d)

    def create(self, dirpath: str, name: str, data: bytes) -> None:
        f = self.walk(dirpath)
        try:
            self.rpc(TLCREATE, struct.pack("<I", f) + _s(name) + struct.pack("<III", O_WRONLY | O_CREAT, 0o644, 0))
            self.write(f, data)
        finally:
            self.clunk(f)

    def write_file(self, path: str, data: bytes) -> None:
        f = self.walk(path)
        try:
            self.lopen(f, O_WRONLY)
            self.write(f, data)
        finally:
            self.clunk(f)

    def read_file(self, path: str) -> bytes:
        f = self.walk(path)
        try:
            self.lopen(f, O_RDONLY)
            return self.read_all(f)
        finally:
            self.clunk(f)

    def stat(self, path: str) -> int:
        f = self.walk(path)
        try:
            return self.getattr(f)
        finally:
            self.clunk(f)

    def close(self) -> None:
        self.sock.close()
